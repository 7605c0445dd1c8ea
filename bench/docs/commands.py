"""The command-line reference page, from `ferbench`'s own argparse parsers (bench/cli.py)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

from bench.docs.markdown import page


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help line, parser) of each subcommand of `parser`, in the order its help lists them."""
    for action in parser._actions:  # argparse has no public accessor for its subparsers
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def _sections(parser: argparse.ArgumentParser, level: int) -> Iterator[str]:
    for _name, help_line, sub in _subcommands(parser):
        anchor = sub.prog.removeprefix("ferbench ").replace(" ", "-")
        yield (f"{'#' * level} `{sub.prog}` {{#{anchor}}}\n\n{help_line[:1].upper() + help_line[1:]}\n\n"
               f"```text\n{sub.format_help().rstrip()}\n```\n")
        yield from _sections(sub, level + 1)


def cli_page(parser: argparse.ArgumentParser) -> str:
    """Every `ferbench` command and subcommand with its help, as `--help` prints it at 100 columns."""
    width = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: fixed, so the page is the same everywhere
    try:
        top = f"```text\n{parser.format_help().rstrip()}\n```\n"
        return page("Command line", "Every command of `ferbench`, with what `ferbench COMMAND --help` prints. "
                    "Dotted config overrides (`key=value`) may follow a command's options wherever it takes a "
                    "config ([configuration keys](config.md)).", [top, *_sections(parser, 2)])
    finally:
        if width is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = width
