"""Every generated page of the site, by its path under docs/."""

from __future__ import annotations

from pathlib import Path

from bench.docs.boards import DEMO_BOARD, board_files, headline, index_page
from bench.docs.commands import cli_page
from bench.docs.config_keys import config_page
from bench.docs.methods import methods_page
from bench.docs.recipes import recipes_page


def reference_pages() -> dict[str, str]:
    """The CLI, configuration, methods and recipes pages, from the code as it is imported now."""
    from bench.cli import build_parser

    return {"ref/cli.md": cli_page(build_parser()), "ref/config.md": config_page(),
            "ref/methods.md": methods_page(), "ref/recipes.md": recipes_page()}


def generated_pages(repo: Path) -> dict[str, str | bytes]:
    """The reference pages and the committed boards (`leaderboards/` of `repo`) with their index."""
    boards = board_files(repo / "leaderboards")
    out: dict[str, str | bytes] = dict(reference_pages())
    out |= {f"leaderboards/{p}": content for p, content in boards.items()}
    out["leaderboards/index.md"] = index_page(boards)
    return out


def home_board(repo: Path, prefix: str) -> str:
    """The demo board's headline, its figure's path under `prefix`."""
    return headline((repo / "leaderboards" / DEMO_BOARD).read_text(), prefix)
