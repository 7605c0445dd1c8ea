"""`ferbench sweep`: run a sweep spec (methods x budgets x seeds) inline or through submitit, skipping finished
runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.commands.options import Subparsers, add_number
from bench.config import Count, NonNegativeInt, Positive
from bench.errors import FERBenchError


def add_parser(subparsers: Subparsers) -> None:
    s = subparsers.add_parser("sweep", help="run a sweep spec (methods x budgets x seeds), skipping finished runs")
    s.add_argument("spec")
    s.add_argument("--dry-run", action="store_true")
    s.add_argument("--leaderboard-dir", default=None)
    s.add_argument("--executor", choices=("inline", "slurm", "local", "debug"), default="inline",
                   help="inline: one run after another in this process (default); slurm: a submitit job array; "
                        "local: submitit subprocesses; debug: submitit in this process")
    s.add_argument("--wait", action="store_true", help="slurm/local: wait for the jobs, then render the leaderboard")
    s.add_argument("--partition", default=None)
    add_number(s, "--time-min", Count, default=None, help="time limit per run, minutes")
    add_number(s, "--cpus-per-task", Count, default=None)
    add_number(s, "--gpus-per-node", NonNegativeInt, default=None, help="one task (process) per GPU")
    add_number(s, "--mem-gb", Positive, default=None)
    add_number(s, "--array-parallelism", Count, default=None, help="most jobs at a time")
    add_number(s, "--runs-per-gpu", Count, default=None, metavar="K",
               help="pack K runs into each job, running concurrently on its GPU (default: the spec's, or 1)")
    s.add_argument("--rerun-stale", action="store_true",
                   help="archive the records whose code's behaviour has changed since (stale), then run those cells "
                        "again; the archived records stay readable (`leaderboard --include-archived`)")
    s.add_argument("overrides", nargs="*", help="dotted overrides applied to every run")
    s.set_defaults(fn=handle)


def handle(args: argparse.Namespace) -> int:
    from bench.launch.orchestrate import SweepRequest, run_sweep

    if args.wait and args.executor == "inline":
        raise FERBenchError("--wait waits for submitted jobs: it needs --executor slurm or local (an inline sweep "
                            "runs in this process and returns when it is done)")
    cluster = {"partition": args.partition, "time_min": args.time_min, "cpus_per_task": args.cpus_per_task,
               "gpus_per_node": args.gpus_per_node, "mem_gb": args.mem_gb,
               "array_parallelism": args.array_parallelism}
    return run_sweep(SweepRequest(Path(args.spec), args.overrides, args.dry_run, args.leaderboard_dir, args.executor,
                                  cluster, args.wait, args.runs_per_gpu, args.rerun_stale))
