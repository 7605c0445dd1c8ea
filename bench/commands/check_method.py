"""`ferbench check-method NAME`: the method plugin contract, one line a check (bench/contract)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.commands.options import Subparsers


def add_parser(subparsers: Subparsers) -> None:
    from bench.contract import CHECKS

    c = subparsers.add_parser(
        "check-method", help="run the method plugin contract on a registered method (FERBench's or a plugin's)",
        description="Runs the method plugin contract on a tiny generated dataset on this machine, one line a check: "
                    f"{', '.join(CHECKS)}. Exit 0 when no check fails, 1 when one does.")
    c.add_argument("name", help="a registered method (ferbench methods)")
    c.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="a dotted config override for the tiny runs, on top of the method's check_settings "
                        "(repeatable), e.g. --set method_args.threshold=0.5")
    c.add_argument("--skip", action="append", default=[], metavar="CHECK", help=f"a check not to run (repeatable): "
                                                                               f"{', '.join(CHECKS)}")
    c.add_argument("--cache-dir", default=None, help="where the tiny dataset is prepared (default: the FERBench "
                                                     "cache, $FERBENCH_CACHE)")
    c.add_argument("--work-dir", default=None, help="keep the runs here (default: a temporary folder, removed)")
    c.set_defaults(fn=handle)


def handle(args: argparse.Namespace) -> int:
    from bench.contract import CheckOptions, CheckResult, check_method
    from bench.errors import FERBenchError
    from bench.registry import method_origin

    for s in args.settings:
        if "=" not in s:
            raise FERBenchError(f"check-method --set {s!r}: expected KEY=VALUE, e.g. method_args.threshold=0.5")
    options = CheckOptions(cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                           work_dir=Path(args.work_dir) if args.work_dir else None,
                           settings=tuple(args.settings), skip=frozenset(args.skip))
    origin = method_origin(args.name)
    print(f"ferbench check-method {args.name} ({origin}): the plugin contract on a tiny generated synthfer", flush=True)

    def report(result: CheckResult) -> None:
        print(result.line(), flush=True)

    results = check_method(args.name, options, report)
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "skip")}
    print(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped")
    return 1 if counts["fail"] else 0
