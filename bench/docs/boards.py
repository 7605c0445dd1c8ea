"""The committed leaderboards as site pages: each board's markdown and figures under `leaderboards/`, an index
of them, and the demo board's headline (figure and first table) for the home page."""

from __future__ import annotations

import re
from pathlib import Path

from bench.docs.markdown import page

#: the demo's board (`make demo` writes it), the one the home page shows
DEMO_BOARD = "synthfer.md"


def board_files(root: Path) -> dict[str, bytes]:
    """Every committed file of the boards (markdown, figures, CSV, LaTeX, fingerprints), by path under `root`."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _title(text: str) -> str:
    return text.splitlines()[0].lstrip("# ").strip()


def headline(text: str, prefix: str = "") -> str:
    """A board's figure and its first table with that table's heading and the note under it; image paths get
    `prefix`, so the headline can be shown from another folder."""
    figure = re.search(r"^!\[[^\]]*\]\(([^)]+)\)$", text, re.M)
    first = re.search(r"^### .*?\n\n(\|.*?\n)\n(.*?\n)", text, re.M | re.S)
    if figure is None or first is None:
        raise ValueError("a board without a figure or a table: regenerate it with `ferbench leaderboard`")
    image = figure.group(0).replace(f"({figure.group(1)})", f"({prefix}{figure.group(1)})")
    heading = first.group(0).splitlines()[0].removeprefix("### ")
    return f"{image}\n\n**{heading}**\n\n{first.group(1)}\n{first.group(2)}"


def index_page(files: dict[str, bytes]) -> str:
    """The boards, each with its title, its figure and a link to the whole board."""
    sections = []
    for path in sorted(p for p in files if p.endswith(".md")):
        text = files[path].decode()
        folder = path.rpartition("/")[0]
        sections.append(f"## {_title(text)} (`leaderboards/{path}`)\n\n{headline(text, f'{folder}/' if folder else '')}"
                        f"\n[The whole board]({path}): every metric, the paired differences, per-class recall, "
                        "confusion matrices and provenance.\n")
    intro = ("The leaderboards committed with the code, regenerated whenever a change alters what they print "
             "(`ferbench leaderboard RECORDS -o DIR`); the tests fail when a board's fingerprints no longer match "
             "the code. [Leaderboards](../guides/leaderboards.md) says how to read and make them, and "
             "[statistics](../concepts/statistics.md) what each interval covers.")
    return page("Committed leaderboards", intro, sections)
