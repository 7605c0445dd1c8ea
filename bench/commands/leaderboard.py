"""`ferbench leaderboard`: markdown + PNG leaderboards (and LaTeX, CSV) rendered from a folder of run records."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.commands.options import Subparsers


def add_parser(subparsers: Subparsers) -> None:
    lb = subparsers.add_parser("leaderboard", help="render markdown + PNG leaderboards (and LaTeX, CSV) from run "
                                                   "records")
    lb.add_argument("records_dir")
    lb.add_argument("-o", "--output", default="leaderboards")
    lb.add_argument("--baseline", default=None, help="the method each Δ is against (default: supervised, when it "
                                                     "ran)")
    lb.add_argument("--format", default="md", help="comma-separated: md, tex, csv (e.g. md,tex,csv)")
    lb.add_argument("--interval", default="combined", choices=("combined", "seeds"),
                    help="accuracy interval shown: over seeds and test images (default), or the seed-only t-CI")
    lb.add_argument("--include-archived", action="store_true",
                    help="also the records `sweep --rerun-stale` archived (each in a row of its own)")
    lb.add_argument("--no-probe", action="store_true",
                    help="mark cells from the fingerprints cached for the code installed now, without probing")
    lb.add_argument("--reported", default=None, metavar="YAML",
                    help="published numbers for reference-recipe leaderboards (default: bench/results/reported.yaml)")
    lb.add_argument("--log-to", default="", metavar="TRACKERS",
                    help="comma-separated: wandb, mlflow: also log the rendered boards there, as one tracker run "
                         "named leaderboard-NAME (NAME: the records' sweep folder)")
    lb.set_defaults(fn=handle)


def handle(args: argparse.Namespace) -> int:
    from bench.engine.trackers import check_trackers
    from bench.errors import FERBenchError
    from bench.results.board_trackers import BOARD_TRACKERS, log_boards
    from bench.results.render import render_records

    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    trackers = list(dict.fromkeys(t.strip() for t in args.log_to.split(",") if t.strip()))
    unknown = [t for t in trackers if t not in BOARD_TRACKERS]
    if unknown:
        raise FERBenchError(f"--log-to {unknown[0]}: expected {' or '.join(BOARD_TRACKERS)}")
    check_trackers(trackers)  # before anything is rendered
    paths = render_records(Path(args.records_dir), Path(args.output), args.baseline or "supervised", formats=formats,
                   interval=args.interval, reported=Path(args.reported) if args.reported else None,
                   baseline_given=args.baseline is not None, include_archived=args.include_archived,
                   probe=not args.no_probe)
    if trackers and paths:
        log_boards(paths, trackers, Path(args.records_dir).resolve().parent.name)
    return 0
