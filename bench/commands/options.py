"""What the command modules share: number options checked as they are parsed, and the console tables print on."""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Callable
from typing import Annotated, Any

from bench.checks import Interval, check_value, describe
from bench.errors import FERBenchError

# Ranges of command-line numbers that no config field has
Fraction = Annotated[float, Interval("(0, 1)")]
Points = Annotated[float, Interval("(0, 100]")]  # an accuracy difference or its SD: at most 100 points
PointsOrZero = Annotated[float, Interval("[0, 100]")]

#: what `add_parser(subparsers)` of a command module receives (argparse has no public name for it)
Subparsers = argparse._SubParsersAction


def add_number(parser: argparse.ArgumentParser, flag: str, hint: Any, **kwargs: Any) -> None:
    """A number option of `parser`, checked against `hint` as it is parsed (`number`); errors name the command."""
    parser.add_argument(flag, type=number(hint, f"{parser.prog.removeprefix('ferbench ')} {flag}"), **kwargs)


def number(hint: Any, flag: str) -> Callable[[str], Any]:
    """argparse `type` of a number option: parsed, then checked by the config's own checker (bench/checks.py), so a
    value out of range is one line naming the option and the value as typed (a FERBenchError, which argparse lets
    through), never argparse's usage text and never a value quietly changed."""
    kind = typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint

    def parse(text: str) -> Any:
        try:
            return check_value(kind(text), hint, flag)
        except (ValueError, FERBenchError):
            raise FERBenchError(f"{flag} {text}: expected {describe(hint)}") from None

    return parse


def console() -> Any:
    """A rich console, 200 columns wide when the output is not a terminal (so piped tables do not wrap)."""
    from rich.console import Console

    return Console(width=200 if not sys.stdout.isatty() else None)
