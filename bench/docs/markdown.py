"""Markdown building blocks the generated pages share."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any


def _prose(text: str) -> str:
    # outside code spans, `<name>` is text, not an HTML tag, and a pipe is not a column break
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def cell(text: Any) -> str:
    """`text` as one table cell: markup characters escaped outside code spans, newlines as line breaks."""
    parts = re.split(r"(`[^`]*`)", str(text))
    return "".join(p if p.startswith("`") else _prose(p) for p in parts).replace("\n", "<br>")


def code(value: Any) -> str:
    """A value as inline code, in JSON form (what a config file or `--set` takes)."""
    return f"`{json.dumps(value)}`"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def page(title: str, intro: str, sections: Iterable[str]) -> str:
    """A generated page: its title, a line saying it is generated, an intro paragraph, then its sections."""
    head = (f"# {title}\n\n*Generated from the code when the site is built (`make docs`); edit the code, not this "
            f"page.*\n\n{intro}\n")
    return "\n".join([head, *sections])
