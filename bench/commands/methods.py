"""`ferbench methods [NAME]`: the registered methods (with where each comes from: built-in or its distribution), or
one method's arguments."""

from __future__ import annotations

import argparse
import json

from bench.commands.options import Subparsers, console


def add_parser(subparsers: Subparsers) -> None:
    m = subparsers.add_parser("methods", help="list registered methods with their views, arguments and sources")
    m.add_argument("name", nargs="?", default=None, help="one method: its arguments' types, ranges and notes")
    m.set_defaults(fn=handle)


def handle(args: argparse.Namespace) -> int:
    from rich.table import Table

    from bench.method import describe_arguments
    from bench.registry import get_method_class, method_names, method_origin

    if args.name:  # one method's arguments: name, type and range, default, where the default comes from
        cls = get_method_class(args.name)
        table = Table(title=f"{args.name}: {cls.reference}")
        for col in ("argument", "type", "default", "note"):
            table.add_column(col, overflow="fold")
        for a in describe_arguments(cls.Args):
            note = ("RECONSTRUCTED (not from a source): " if a.reconstructed else "") + a.note
            table.add_row(a.name, a.type, json.dumps(a.default), note)
        console().print(table)
        return 0
    table = Table(title="Registered methods (ferbench methods NAME: one method's arguments)")
    for col in ("name", "from", "unlabeled views", "labels", "arguments (default)", "reconstructed (not from a source)",
                "source"):
        table.add_column(col, overflow="fold")
    for name in method_names():
        cls = get_method_class(name)
        arguments = describe_arguments(cls.Args)
        table.add_row(name, method_origin(name), ", ".join(cls.views) or "-", cls.labeled_source,
                      ", ".join(f"{a.name}={json.dumps(a.default)}" for a in arguments) or "-",
                      ", ".join(a.name for a in arguments if a.reconstructed) or "-", cls.reference)
    console().print(table)
    return 0
