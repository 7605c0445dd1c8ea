"""`ferbench recipes`: the protocols, the harness and each reference recipe, with their sources."""

from __future__ import annotations

import argparse
import json

from bench.commands.options import Subparsers, console


def add_parser(subparsers: Subparsers) -> None:
    rc = subparsers.add_parser("recipes", help="list the protocols: the harness and each reference recipe, with "
                                               "sources")
    rc.set_defaults(fn=handle)


def handle(args: argparse.Namespace) -> int:
    from rich.table import Table

    from bench.bundles import get_recipe, recipe_names

    table = Table(title="Protocols: the harness (default) and the reference recipes (recipe=NAME)")
    for col in ("recipe", "reproduces", "reference for", "sets", "known differences", "source"):
        table.add_column(col, overflow="fold")
    table.add_row("harness", "one substrate for every method: the fair comparison", "every method",
                  "the config defaults and the method's", "-", "bench/config.py")
    for name in recipe_names():
        r = get_recipe(name)
        sets = json.dumps(r.config, sort_keys=True)
        if r.methods:
            sets += "; per method: " + json.dumps(r.methods, sort_keys=True)
        table.add_row(name, r.title, ", ".join(r.reference_for), sets,
                      "\n".join(f"- {d}" for d in r.known_differences) or "-", r.source)
    console().print(table)
    return 0
