"""`ferbench demo`: supervised vs FixMatch on synthfer (or the longer spec with more methods), then the
leaderboard."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.commands.options import Subparsers

CONFIG_DIR = Path(__file__).parent.parent / "configs"


def add_parser(subparsers: Subparsers) -> None:
    dm = subparsers.add_parser("demo", help="supervised vs FixMatch on synthfer, 2 budgets x 3 seeds, + leaderboard")
    dm.add_argument("--output-dir", default=None, help="default: runs/demo")
    dm.add_argument("--leaderboard-dir", default="leaderboards")
    dm.add_argument("--full", action="store_true", help="the longer demo spec (more methods)")
    dm.add_argument("overrides", nargs="*")
    dm.set_defaults(fn=handle)


def handle(args: argparse.Namespace) -> int:
    from bench.launch.orchestrate import SweepRequest, run_sweep

    spec = CONFIG_DIR / ("demo_full.yaml" if args.full else "demo.yaml")
    overrides = [f"output_dir={args.output_dir}"] if args.output_dir else []
    t0 = time.perf_counter()
    rc = run_sweep(SweepRequest(spec, overrides + args.overrides, leaderboard_dir=args.leaderboard_dir))
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return rc
