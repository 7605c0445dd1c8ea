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
    """What the accuracy interval of a table covers, in its `interval` mode."""
    return "95% CI over seeds and test images" if interval == "combined" else "95% t-CI over seeds"
