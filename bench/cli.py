"""`ferbench` command line: data, run, sweep, leaderboard, demo, methods.

Bad input ends with one line `ferbench: error: ...` on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench.errors import FERBenchError

CONFIG_DIR = Path(__file__).with_name("configs")


def _cmd_methods(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from bench.registry import get_method_class, method_names

    table = Table(title="Registered methods")
    for col in ("name", "unlabeled views", "labels", "defaults", "reconstructed (not from a source)", "source"):
        table.add_column(col, overflow="fold")
    for name in method_names():
        cls = get_method_class(name)
        table.add_row(name, ", ".join(cls.views) or "-", cls.labeled_source,
                      json.dumps(cls.defaults, sort_keys=True), ", ".join(cls.reconstructed) or "-", cls.reference)
    Console(width=200 if not sys.stdout.isatty() else None).print(table)
    return 0


def _cmd_data_prepare(args: argparse.Namespace) -> int:
    from bench.data.cache import load_prepared, prepare_dataset

    t0 = time.perf_counter()
    options = {}
    if args.dataset == "synthfer":
        options = {"n_train": args.n_train, "n_test": args.n_test, "seed": args.synth_seed}
    path = prepare_dataset(args.dataset, args.root, args.image_size, args.cache_dir, options,
                           args.on_bad_image, args.workers, progress=True)
    data = load_prepared(path)
    bad = data.info.get("bad_images", [])
    print(f"prepared {args.dataset}: {len(data.train.ids)} train + {len(data.test.ids)} test images at "
          f"{args.image_size}px in {path} ({time.perf_counter() - t0:.1f} s; {len(bad)} unreadable skipped)")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from bench.config import build_config
    from bench.engine.trainer import run_paths, train

    cfg = build_config(args.config, args.overrides)
    existed = run_paths(cfg).record.exists()
    rec = train(cfg, progress=_progress() if not args.quiet else None)
    if rec is None:
        print(f"stopped at iteration {cfg.train.stop_after} (checkpoint saved in {run_paths(cfg).checkpoint})")
        return 0
    m = rec["metrics"]
    state = "already done" if existed else "done"
    print(f"{rec['run_id']} {state}: accuracy {m['final']['accuracy']:.4f}, mean class accuracy "
          f"{m['final']['mean_class_accuracy']:.4f}, record {run_paths(cfg).record}")
    return 0


def _progress():  # a live progress display for single runs
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


def _run_sweep(spec_path: Path, overrides: list[str], dry_run: bool, leaderboard_dir: str | None) -> int:
    from bench.launch.sweep import expand, load_sweep, run_local

    spec = load_sweep(spec_path)
    runs = expand(spec, overrides)
    from bench.engine.trainer import run_paths, validate

    for cfg in runs:  # fail on bad names or values before any run starts
        validate(cfg)
    todo = [c for c in runs if not run_paths(c).record.exists()]
    print(f"sweep {spec.name}: {len(runs)} runs, {len(runs) - len(todo)} already done, {len(todo)} to run")
    if dry_run:
        for c in todo:
            print(f"  {c.method} {c.data.protocol}={c.data.budget:g} seed={c.seed}")
        return 0
    t0 = time.perf_counter()
    records, failures = run_local(runs)
    print(f"sweep {spec.name}: {len(records)} records, {len(failures)} failed, {time.perf_counter() - t0:.0f} s")
    out = leaderboard_dir or spec.leaderboard_dir
    if out and records:
        _render(Path(spec.output_dir) / "records", Path(out), "supervised")
    for cfg, err in failures:
        print(f"ferbench: run failed: {cfg.method} budget={cfg.data.budget:g} seed={cfg.seed}: {err}", file=sys.stderr)
    return 1 if failures else 0


def _render(records_dir: Path, out: Path, baseline: str) -> list[Path]:
    from bench.results.leaderboard import render_leaderboards
    from bench.results.record import load_records

    if not records_dir.is_dir():
        raise FERBenchError(f"{records_dir}: records folder not found")
    records = load_records(records_dir)
    if not records:
        raise FERBenchError(f"{records_dir}: no run records found")
    paths = render_leaderboards(records, out, baseline=baseline)
    for p in paths:
        print(f"wrote {p}")
    return paths


def _cmd_sweep(args: argparse.Namespace) -> int:
    return _run_sweep(Path(args.spec), args.overrides, args.dry_run, args.leaderboard_dir)


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    _render(Path(args.records_dir), Path(args.output), args.baseline)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    spec = CONFIG_DIR / ("demo_full.yaml" if args.full else "demo.yaml")
    overrides = [f"output_dir={args.output_dir}"] if args.output_dir else []
    t0 = time.perf_counter()
    rc = _run_sweep(spec, overrides + args.overrides, False, args.leaderboard_dir)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return rc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ferbench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("methods", help="list registered methods with their views, defaults and sources")
    m.set_defaults(fn=_cmd_methods)

    d = sub.add_parser("data", help="dataset tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    prep = dsub.add_parser("prepare", help="decode a dataset into the Arrow cache")
    prep.add_argument("dataset")
    prep.add_argument("--root", default=None, help="raw dataset folder (not needed for synthfer)")
    prep.add_argument("--image-size", type=int, default=48)
    prep.add_argument("--cache-dir", default=None)
    prep.add_argument("--on-bad-image", choices=("fail", "skip"), default="fail")
    prep.add_argument("--workers", type=int, default=None)
    prep.add_argument("--n-train", type=int, default=6000, help="synthfer only")
    prep.add_argument("--n-test", type=int, default=1500, help="synthfer only")
    prep.add_argument("--synth-seed", type=int, default=0, help="synthfer only")
    prep.set_defaults(fn=_cmd_data_prepare)

    r = sub.add_parser("run", help="train one run (resumes from its checkpoint if interrupted)")
    r.add_argument("--config", "-c", action="append", default=[], help="YAML config file (repeatable)")
    r.add_argument("--quiet", action="store_true")
    r.add_argument("overrides", nargs="*", help="dotted overrides, e.g. method=fixmatch data.budget=0.02")
    r.set_defaults(fn=_cmd_run)

    s = sub.add_parser("sweep", help="run a sweep spec (methods x budgets x seeds), skipping finished runs")
    s.add_argument("spec")
    s.add_argument("--dry-run", action="store_true")
    s.add_argument("--leaderboard-dir", default=None)
    s.add_argument("overrides", nargs="*", help="dotted overrides applied to every run")
    s.set_defaults(fn=_cmd_sweep)

    lb = sub.add_parser("leaderboard", help="render markdown + PNG leaderboards from run records")
    lb.add_argument("records_dir")
    lb.add_argument("-o", "--output", default="leaderboards")
    lb.add_argument("--baseline", default="supervised")
    lb.set_defaults(fn=_cmd_leaderboard)

    dm = sub.add_parser("demo", help="supervised vs FixMatch on synthfer, 2 budgets x 3 seeds, + leaderboard")
    dm.add_argument("--output-dir", default=None, help="default: runs/demo")
    dm.add_argument("--leaderboard-dir", default="leaderboards")
    dm.add_argument("--full", action="store_true", help="the longer demo spec (more methods)")
    dm.add_argument("overrides", nargs="*")
    dm.set_defaults(fn=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched at run time
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except FERBenchError as e:
        print(f"ferbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ferbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
