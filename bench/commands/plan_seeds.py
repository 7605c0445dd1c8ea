"""`ferbench plan-seeds`: the seeds a sweep needs to detect a given accuracy difference against its baseline."""

from __future__ import annotations

import argparse

from bench.commands.options import Fraction, Points, PointsOrZero, Subparsers, add_number
from bench.config import Count


def add_parser(subparsers: Subparsers) -> None:
    ps = subparsers.add_parser("plan-seeds", help="seeds a sweep needs to detect a given accuracy difference vs its "
                                                  "baseline")
    ps.add_argument("records_dir", nargs="?", default=None,
                    help="a pilot sweep's records: plans from the variance of each of its comparisons")
    ps.add_argument("--delta", default="1,2,3,5", help="target differences, percentage points (default 1,2,3,5)")
    ps.add_argument("--baseline", default="supervised")
    add_number(ps, "--power", Fraction, default=0.8)
    add_number(ps, "--alpha", Fraction, default=0.05)
    add_number(ps, "--comparisons", Count, default=1, metavar="M",
               help="plan for alpha / M, to stay significant after Holm's correction over M comparisons")
    add_number(ps, "--sd-seed", Points, default=None, metavar="POINTS",
               help="instead of records: SD of one seed's paired difference (a CSV's delta_sd_seed)")
    add_number(ps, "--se-image", PointsOrZero, default=0.0, metavar="POINTS",
               help="with --sd-seed: SE of the difference from the test images (a CSV's delta_se_image)")
    ps.set_defaults(fn=handle)


def handle(args: argparse.Namespace) -> int:
    from bench.results.planning import plan_command

    print(plan_command(args.records_dir, args.delta, baseline=args.baseline, power=args.power, alpha=args.alpha,
                       comparisons=args.comparisons, sd_seed=args.sd_seed, se_image=args.se_image), end="")
    return 0
