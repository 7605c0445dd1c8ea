"""`ferbench run`: train one run, resuming from its checkpoint if it was interrupted."""

from __future__ import annotations

import argparse
import json
from typing import Any

from bench.commands.options import Subparsers


def add_parser(subparsers: Subparsers) -> None:
    r = subparsers.add_parser("run", help="train one run (resumes from its checkpoint if interrupted)")
    r.add_argument("--config", "-c", action="append", default=[], help="YAML config file (repeatable)")
    r.add_argument("--quiet", action="store_true")
    r.add_argument("--pretrain-data", nargs="+", metavar="DIR", default=[],
                   help="image folders added to the unlabeled images of a reconstruction-pretraining stage "
                        "(method=frpretrain)")
    r.add_argument("overrides", nargs="*", help="dotted overrides, e.g. method=fixmatch data.budget=0.02")
    r.set_defaults(fn=handle)


def handle(args: argparse.Namespace) -> int:
    from bench.config import build_config
    from bench.engine.trainer import run_paths, train
    from bench.launch.preemption import Preemption

    overrides = list(args.overrides)
    if args.pretrain_data:  # FR-pretraining's extra face folders for its reconstruction stage
        overrides.append(f"method_args.pretrain_data={json.dumps(args.pretrain_data)}")
    cfg = build_config(args.config, overrides)
    existed = run_paths(cfg).record.exists()
    preemption = Preemption()  # SIGUSR2 (a scheduler's warning): checkpoint at the next agreed step and stop
    try:
        rec = train(cfg, progress=_progress() if not args.quiet else None, should_stop=preemption)
    finally:
        preemption.restore()
    if rec is None:
        why = "on a pre-emption signal (SIGUSR2)" if preemption() else "before the last iteration"
        print(f"stopped {why}; the checkpoint to resume from is under {run_paths(cfg).run_dir}")
        return 0
    m = rec["metrics"]
    state = "already done" if existed else "done"
    print(f"{rec['run_id']} {state}: accuracy {m['final']['accuracy']:.4f}, mean class accuracy "
          f"{m['final']['mean_class_accuracy']:.4f}, record {run_paths(cfg).record}")
    return 0


def _progress() -> Any:  # a live progress display for single runs
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    class _Live(Progress):
        def add_task(self, *a, **k):  # start the display on first use
            if not self.live.is_started:
                self.start()
            return super().add_task(*a, **k)

        def remove_task(self, task):
            super().remove_task(task)
            self.stop()

    return _Live(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
