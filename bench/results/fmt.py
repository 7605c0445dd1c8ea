"""How leaderboard numbers are written, the same in markdown, LaTeX and CSV captions."""

from __future__ import annotations


def pct(x: float, signed: bool = False) -> str:
    """A fraction in percent with one decimal (as in every table); never "-0.0"."""
    v = round(x * 100.0, 1) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{v:+.1f}" if signed else f"{v:.1f}"


def p_text(name: str, p: float) -> str:
    """`p=0.012`, `p<0.001` (3 decimals, as the tables print p-values)."""
    return f"{name}<0.001" if p < 0.001 else f"{name}={p:.3f}"


def interval_words(interval: str) -> str:
    """What a table's interval is computed over, in its `interval` mode."""
    return "95% CI over seeds and test images" if interval == "combined" else "95% t-CI over seeds"


def images_words(n_test: list[int]) -> str:
    """`1,500 test images` (or `1,500 or 3,068 test images` when records disagree; `test images` if unknown)."""
    return " or ".join(f"{n:,}" for n in n_test) + " test images" if n_test else "test images"


def covers_words(interval: str, n_test: list[int], n_groups: list[int] | None = None) -> str:
    """What a 95% interval of a table covers: its estimand, with the test set's size."""
    if interval == "combined":
        units = (f"; images are resampled in their {' or '.join(f'{g:,}' for g in n_groups)} groups (subject or "
                 "video)") if n_groups else ""
        return (f"the expected value for a new seed on new test images from the population these "
                f"{images_words(n_test)} sample{units}")
    return f"the expected value for a new seed on these same {images_words(n_test)}, not on new test images"
