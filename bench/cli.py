"""`ferbench` command line: data, run, sweep, leaderboard, demo, methods.

Bad input ends with one line `ferbench: error: ...` on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from bench.checks import Interval, check_value, describe
from bench.config import Count, ImageSide, NonNegative, NonNegativeInt, Positive
from bench.errors import FERBenchError
from bench.startup import configure

CONFIG_DIR = Path(__file__).with_name("configs")

# Ranges of command-line numbers that no config field has
Fraction = Annotated[float, Interval("(0, 1)")]
Points = Annotated[float, Interval("(0, 100]")]  # an accuracy difference or its SD: at most 100 points
PointsOrZero = Annotated[float, Interval("[0, 100]")]


def _add_number(parser: argparse.ArgumentParser, flag: str, hint: Any, **kwargs: Any) -> None:
    """A number option of `parser`, checked against `hint` as it is parsed (`_number`); errors name the command."""
    parser.add_argument(flag, type=_number(hint, f"{parser.prog.removeprefix('ferbench ')} {flag}"), **kwargs)


def _number(hint: Any, flag: str) -> Callable[[str], Any]:
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


def _cmd_methods(args: argparse.Namespace) -> int:
    from rich.table import Table

    from bench.method import describe_arguments
    from bench.registry import get_method_class, method_names

    if args.name:  # one method's arguments: name, type and range, default, where the default comes from
        cls = get_method_class(args.name)
        table = Table(title=f"{args.name}: {cls.reference}")
        for col in ("argument", "type", "default", "note"):
            table.add_column(col, overflow="fold")
        for a in describe_arguments(cls.Args):
            note = ("RECONSTRUCTED (not from a source): " if a.reconstructed else "") + a.note
            table.add_row(a.name, a.type, json.dumps(a.default), note)
        _console().print(table)
        return 0
    table = Table(title="Registered methods (ferbench methods NAME: one method's arguments)")
    for col in ("name", "unlabeled views", "labels", "arguments (default)", "reconstructed (not from a source)",
                "source"):
        table.add_column(col, overflow="fold")
    for name in method_names():
        cls = get_method_class(name)
        arguments = describe_arguments(cls.Args)
        table.add_row(name, ", ".join(cls.views) or "-", cls.labeled_source,
                      ", ".join(f"{a.name}={json.dumps(a.default)}" for a in arguments) or "-",
                      ", ".join(a.name for a in arguments if a.reconstructed) or "-", cls.reference)
    _console().print(table)
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from rich.console import Console
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
    Console(width=200 if not sys.stdout.isatty() else None).print(table)
    return 0


def _reader_options(args: argparse.Namespace) -> dict:
    """`-o key=value` reader options (values parsed as YAML); synthfer's generator flags for synthfer."""
    import yaml

    options: dict = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FERBenchError(f"--option {item!r}: expected KEY=VALUE, e.g. -o images=original")
        options[key.strip()] = yaml.safe_load(value)
    if args.dataset == "synthfer":
        options = {"n_train": args.n_train, "n_test": args.n_test, "seed": args.synth_seed, **options}
    return options


def _class_table(title: str, names: tuple[str, ...], codes: dict[int, int], columns: dict[str, list[int]]):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("class")
    table.add_column("code", justify="right")
    for col in columns:
        table.add_column(col, justify="right")
    for c, name in enumerate(names):
        table.add_row(f"{c} {name}", str(codes.get(c, "-")), *(f"{v[c]:,}" for v in columns.values()))
    table.add_row("total", "", *(f"{sum(v):,}" for v in columns.values()), style="bold")
    return table


def _print_dropped(console, report) -> None:
    for (split, reason), n in sorted(report.dropped.items()):
        console.print(f"  dropped from {split}: {n:,} ({reason})")


def _console():
    from rich.console import Console

    return Console(width=200 if not sys.stdout.isatty() else None)


def _cmd_data_verify(args: argparse.Namespace) -> int:
    from bench.data.inspect import check_images, survey

    t0 = time.perf_counter()
    sv = survey(args.dataset, args.root, args.protocol, _reader_options(args), args.cache_dir, strict=False)
    problems = list(sv.report.problems) + check_images(sv.records, args.workers, progress=True)
    console = _console()
    counts = sv.counts()
    console.print(f"{sv.key} at {args.root}: {'; '.join(sv.report.notes)}")
    console.print(f"  {len(sv.records):,} labelled entries: " + ", ".join(f"{s} {sum(v):,}" for s, v in counts.items()))
    _print_dropped(console, sv.report)
    if not problems:
        console.print(f"verify {sv.key}: OK, every entry parsed and every image decoded "
                      f"({time.perf_counter() - t0:.1f} s)")
        return 0
    by_kind: dict[str, list] = {}
    for pr in problems:
        by_kind.setdefault(pr.kind, []).append(pr)
    for kind, items in sorted(by_kind.items()):
        console.print(f"  {kind}: {len(items):,}")
        for pr in items[: args.show]:
            console.print(f"    {pr}", markup=False, highlight=False)
        if len(items) > args.show:
            console.print(f"    ... and {len(items) - args.show:,} more")
    summary = ", ".join(f"{len(v):,} {k}" for k, v in sorted(by_kind.items()))
    print(f"ferbench: verify {sv.key}: {len(problems):,} problem(s): {summary}", file=sys.stderr)
    return 1


def _cmd_data_stats(args: argparse.Namespace) -> int:
    from bench.data.inspect import survey
    from bench.data.splits import labeled_counts
    from bench.results.plots import budget_label, plot_class_counts

    sv = survey(args.dataset, args.root, args.protocol, _reader_options(args), args.cache_dir, strict=True)
    columns = sv.counts()
    if args.budget is not None:
        want = labeled_counts(columns["train"], args.budget_protocol, args.budget, list(sv.class_names))
        columns[f"labeled {budget_label(args.budget_protocol, args.budget)}"] = want
    console = _console()
    console.print(f"{sv.key} at {args.root}: {'; '.join(sv.report.notes)}")
    console.print(_class_table(f"{sv.key}: images per class", sv.class_names, sv.native_codes(), columns))
    _print_dropped(console, sv.report)
    out = Path(args.out or f"{sv.key}-stats.png")
    plot_class_counts(f"{sv.key}: images per class", sv.class_names, columns, out)
    console.print(f"wrote {out}")
    return 0


def _cmd_data_prepare(args: argparse.Namespace) -> int:
    from bench.data.cache import load_prepared, prepare_dataset

    t0 = time.perf_counter()
    path = prepare_dataset(args.dataset, args.root, args.image_size, args.cache_dir, _reader_options(args),
                           args.on_bad_image, args.workers, progress=True, label_protocol=args.protocol)
    data = load_prepared(path)
    info = data.info
    bad = info.get("bad_images", [])
    console = _console()
    codes = {int(c): code for c, code in info.get("native_codes", {}).items()}
    console.print(_class_table(f"{data.name} at {args.image_size}px", data.class_names, codes,
                               {s: info["counts"][s]["per_class"] for s in ("train", "test")}))
    for what, n in info.get("dropped", {}).items():
        console.print(f"  dropped from {what.split(': ', 1)[0]}: {n:,} ({what.split(': ', 1)[1]})")
    for b in bad[: 10]:
        console.print(f"  skipped unreadable image {b['path']}: {b['error']}", markup=False, highlight=False)
    print(f"prepared {data.name}: {len(data.train.ids)} train + {len(data.test.ids)} test images at "
          f"{args.image_size}px in {path} ({time.perf_counter() - t0:.1f} s; {len(bad)} unreadable skipped)")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
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


def _cmd_status(args: argparse.Namespace) -> int:
    from bench.launch.status import print_status

    print_status(args.output_dir, probe=not args.no_probe)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from bench.launch.orchestrate import SweepRequest, run_sweep

    if args.wait and args.executor == "inline":
        raise FERBenchError("--wait waits for submitted jobs: it needs --executor slurm or local (an inline sweep "
                            "runs in this process and returns when it is done)")
    cluster = {"partition": args.partition, "time_min": args.time_min, "cpus_per_task": args.cpus_per_task,
               "gpus_per_node": args.gpus_per_node, "mem_gb": args.mem_gb,
               "array_parallelism": args.array_parallelism}
    return run_sweep(SweepRequest(Path(args.spec), args.overrides, args.dry_run, args.leaderboard_dir, args.executor,
                                  cluster, args.wait, args.runs_per_gpu, args.rerun_stale))


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from bench.results.render import render_records

    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    render_records(Path(args.records_dir), Path(args.output), args.baseline or "supervised", formats, args.interval,
                   Path(args.reported) if args.reported else None, baseline_given=args.baseline is not None,
                   include_archived=args.include_archived, probe=not args.no_probe)
    return 0


def _cmd_plan_seeds(args: argparse.Namespace) -> int:
    from bench.results.planning import plan_command

    print(plan_command(args.records_dir, args.delta, args.baseline, args.power, args.alpha, args.comparisons,
                       args.sd_seed, args.se_image), end="")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from bench.launch.orchestrate import SweepRequest, run_sweep

    spec = CONFIG_DIR / ("demo_full.yaml" if args.full else "demo.yaml")
    overrides = [f"output_dir={args.output_dir}"] if args.output_dir else []
    t0 = time.perf_counter()
    rc = run_sweep(SweepRequest(spec, overrides + args.overrides, leaderboard_dir=args.leaderboard_dir))
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return rc


def _cmd_bench_prepare(args: argparse.Namespace) -> int:
    from bench.benchmarks.prepare_speed import run_prepare_benchmark

    run_prepare_benchmark(args.n, args.size, args.image_size, args.workers, args.work_dir, args.json)
    return 0


def _cmd_bench_memory(args: argparse.Namespace) -> int:
    from bench.benchmarks.memory import run_memory_benchmark

    run_memory_benchmark(args.n, args.size, args.image_size, args.iterations, args.work_dir, args.json)
    return 0


#: `ferbench bench train` flags that are shortcuts for config overrides
BENCH_TRAIN_FLAGS = {"image_size": "data.image_size", "batch_size": "train.batch_size", "mu": "train.mu",
                     "backbone": "model.backbone", "augment_on": "data.augment_on", "compile": "train.compile",
                     "channels_last": "train.channels_last", "mixed_precision": "train.mixed_precision",
                     "workers": "data.workers", "n_train": "data.synthfer.n_train", "cache_dir": "data.cache_dir"}


#: `ferbench bench train` flags of the contention mode only
CONTENTION_FLAGS = ("policies", "threads", "busy", "busy_pinned", "repeats", "rounds", "wait_quiet")
CONTENTION_NUMBERS = ("busy", "repeats", "rounds", "wait_quiet")


def _int_list(flag: str, text: str) -> list[int]:
    try:
        return check_value([int(v) for v in text.split(",") if v.strip()], list[Count], flag)
    except (ValueError, FERBenchError):
        raise FERBenchError(f"bench train --{flag} {text!r}: expected whole numbers separated by commas, each "
                            f"{describe(Count)}") from None


def _cmd_bench_train(args: argparse.Namespace) -> int:
    from bench.benchmarks.train_speed import run_contention_benchmark, run_train_benchmark

    shortcuts = [f"{key}={str(v).lower() if isinstance(v, bool) else v}" for flag, key in BENCH_TRAIN_FLAGS.items()
                 if (v := getattr(args, flag)) is not None]
    if not args.contention:
        given = [f"--{f.replace('_', '-')}" for f in CONTENTION_FLAGS if getattr(args, f) not in (None, False)]
        if given:
            raise FERBenchError(f"bench train: {', '.join(given)} only with --contention")
        run_train_benchmark(args.method, shortcuts + args.overrides, steps=args.steps, warmup=args.warmup,
                            cpu_path=not args.no_cpu_path, json_path=args.json, stage=args.stage)
        return 0
    policies = [p.strip() for p in args.policies.split(",") if p.strip()] if args.policies else None
    threads = _int_list("threads", args.threads) if args.threads else None
    run_contention_benchmark(args.method, shortcuts + args.overrides, steps=args.steps, warmup=args.warmup,
                             policies=policies, threads=threads, pinned=args.busy_pinned, json_path=args.json,
                             stage=args.stage, **{f: getattr(args, f) for f in CONTENTION_NUMBERS
                                                  if getattr(args, f) is not None})  # unset: the function's default
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ferbench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    rc = sub.add_parser("recipes", help="list the protocols: the harness and each reference recipe, with sources")
    rc.set_defaults(fn=_cmd_recipes)
    m = sub.add_parser("methods", help="list registered methods with their views, arguments and sources")
    m.add_argument("name", nargs="?", default=None, help="one method: its arguments' types, ranges and notes")
    m.set_defaults(fn=_cmd_methods)

    d = sub.add_parser("data", help="dataset tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    def dataset_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("dataset", help="rafdb, affectnet7, affectnet8, ferplus or synthfer")
        sp.add_argument("--root", default=None, help="the raw dataset folder (not needed for synthfer)")
        sp.add_argument("--protocol", default=None, help="label protocol (ferplus: majority8 | argmax7)")
        sp.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                        help="reader option, e.g. images=original (rafdb), train_with_valid=true (ferplus), "
                             "layout=csv|npy (affectnet)")
        sp.add_argument("--cache-dir", default=None)
        _add_number(sp, "--n-train", Count, default=6000, help="synthfer only")
        _add_number(sp, "--n-test", Count, default=1500, help="synthfer only")
        _add_number(sp, "--synth-seed", NonNegativeInt, default=0, help="synthfer only")

    ver = dsub.add_parser("verify", help="check the layout, every label entry and every image; writes nothing")
    dataset_args(ver)
    _add_number(ver, "--workers", Count, default=None)
    _add_number(ver, "--show", NonNegativeInt, default=10, help="problems listed per kind")
    ver.set_defaults(fn=_cmd_data_verify)
    st = dsub.add_parser("stats", help="images per split and class, what the protocol drops, and a bar chart")
    dataset_args(st)
    st.add_argument("--budget-protocol", default="fraction", choices=("fraction", "total", "per_class"))
    _add_number(st, "--budget", Positive, default=None, help="also show the labeled counts of this budget")
    st.add_argument("--out", default=None, help="PNG path (default: <dataset>-stats.png)")
    st.set_defaults(fn=_cmd_data_stats)
    prep = dsub.add_parser("prepare", help="decode a dataset into the prepared cache (reused when unchanged)")
    dataset_args(prep)
    _add_number(prep, "--image-size", ImageSide, default=48)
    prep.add_argument("--on-bad-image", choices=("fail", "skip"), default="fail")
    _add_number(prep, "--workers", Count, default=None)
    prep.set_defaults(fn=_cmd_data_prepare)

    b = sub.add_parser("bench", help="speed benchmarks")
    bsub = b.add_subparsers(dest="bench_command", required=True)
    bp = bsub.add_parser("prepare", help="images/s of preparing JPEGs into the cache, 1 vs N workers")
    _add_number(bp, "--n", Annotated[int, Interval("[14, inf)")], default=20000, help="number of JPEGs")
    _add_number(bp, "--size", ImageSide, default=100, help="JPEG side in pixels")
    _add_number(bp, "--image-size", ImageSide, default=100, help="prepared image side")
    _add_number(bp, "--workers", Count, default=2)
    bp.add_argument("--work-dir", default=None, help="where to write the JPEGs (default: the system temp folder)")
    bp.add_argument("--json", default=None, help="also write the results here")
    bp.set_defaults(fn=_cmd_bench_prepare)
    bm = bsub.add_parser("memory", help="peak RSS of a short training run against the size of its prepared cache")
    _add_number(bm, "--n", Annotated[int, Interval("[70, inf)")], default=150_000,
                help="number of JPEGs (a tenth are test images)")
    _add_number(bm, "--size", ImageSide, default=64, help="JPEG side in pixels")
    _add_number(bm, "--image-size", Annotated[int, Interval("[8, 1024]")], default=64, help="prepared image side")
    _add_number(bm, "--iterations", Count, default=50, help="training iterations of the measured run")
    bm.add_argument("--work-dir", default=None, help="where to write the JPEGs and the cache (default: temp)")
    bm.add_argument("--json", default=None, help="also write the results here")
    bm.set_defaults(fn=_cmd_bench_memory)
    bt = bsub.add_parser("train", help="images/s of N training steps end to end vs the pure-compute ceiling")
    bt.add_argument("method")
    _add_number(bt, "--steps", Count, default=20, help="timed steps per measurement")
    _add_number(bt, "--warmup", NonNegativeInt, default=3, help="untimed steps first (compilation, workers starting)")
    _add_number(bt, "--image-size", ImageSide, default=None, help="data.image_size (default 112)")
    _add_number(bt, "--batch-size", Count, default=None, help="train.batch_size: labeled B, unlabeled mu * B "
                                                              "(default 128)")
    _add_number(bt, "--mu", NonNegativeInt, default=None, help="train.mu (default 7)")
    bt.add_argument("--backbone", default=None, help="model.backbone (default resnet18)")
    bt.add_argument("--augment-on", default=None, help="data.augment_on, measured first: device | cpu")
    bt.add_argument("--compile", default=None, help="train.compile: none | default | reduce-overhead")
    bt.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                    help="train.channels_last (default: on with CUDA)")
    bt.add_argument("--mixed-precision", default=None, help="train.mixed_precision: no | bf16 | fp16 (default: bf16 "
                                                             "with CUDA, else no)")
    _add_number(bt, "--workers", NonNegativeInt, default=None, help="data.workers of the CPU path (default: CPUs - 1)")
    _add_number(bt, "--n-train", Count, default=None, help="data.synthfer.n_train: images generated (default "
                                                           "2000)")
    bt.add_argument("--cache-dir", default=None, help="data.cache_dir")
    bt.add_argument("--no-cpu-path", action="store_true", help="skip the augment_on=cpu comparison")
    bt.add_argument("--json", default=None, help="also write the results here")
    bt.add_argument("--stage", default=None, help="a multi-stage method's stage to measure (default: its last)")
    bt.add_argument("--contention", action="store_true",
                    help="images/s idle and with busy processes holding cores, per OpenMP wait policy and thread "
                         "count, each in a fresh process; prints the ratios")
    bt.add_argument("--policies", default=None, help="--contention: wait policies, comma-separated: spin (libgomp's "
                                                      "default), passive, active, spincount=N (default: spin, "
                                                      "passive and spin counts 0 to 100000)")
    bt.add_argument("--threads", default=None, help="--contention: thread counts, comma-separated (default: the "
                                                     "cores this process may use, and 1)")
    _add_number(bt, "--busy", Count, default=None, help="--contention: competing busy processes (default 1)")
    bt.add_argument("--busy-pinned", action="store_true", help="--contention: pin each busy process to one CPU")
    _add_number(bt, "--repeats", Count, default=None, help="--contention: idle/contended pairs per process "
                                                           "(default 1)")
    _add_number(bt, "--rounds", Count, default=None, help="--contention: passes over all settings, medians "
                                                          "shown (default 1)")
    _add_number(bt, "--wait-quiet", NonNegative, default=None, metavar="SECONDS",
                help="--contention, on a shared machine: before each measurement, wait up to SECONDS for the "
                         "other processes to use under 0.2 of this process's cores")
    bt.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. model.head=normalized")
    bt.set_defaults(fn=_cmd_bench_train)

    r = sub.add_parser("run", help="train one run (resumes from its checkpoint if interrupted)")
    r.add_argument("--config", "-c", action="append", default=[], help="YAML config file (repeatable)")
    r.add_argument("--quiet", action="store_true")
    r.add_argument("--pretrain-data", nargs="+", metavar="DIR", default=[],
                   help="image folders added to the unlabeled images of a reconstruction-pretraining stage "
                        "(method=frpretrain)")
    r.add_argument("overrides", nargs="*", help="dotted overrides, e.g. method=fixmatch data.budget=0.02")
    r.set_defaults(fn=_cmd_run)

    s = sub.add_parser("sweep", help="run a sweep spec (methods x budgets x seeds), skipping finished runs")
    s.add_argument("spec")
    s.add_argument("--dry-run", action="store_true")
    s.add_argument("--leaderboard-dir", default=None)
    s.add_argument("--executor", choices=("inline", "slurm", "local", "debug"), default="inline",
                   help="inline: one run after another in this process (default); slurm: a submitit job array; "
                        "local: submitit subprocesses; debug: submitit in this process")
    s.add_argument("--wait", action="store_true", help="slurm/local: wait for the jobs, then render the leaderboard")
    s.add_argument("--partition", default=None)
    _add_number(s, "--time-min", Count, default=None, help="time limit per run, minutes")
    _add_number(s, "--cpus-per-task", Count, default=None)
    _add_number(s, "--gpus-per-node", NonNegativeInt, default=None, help="one task (process) per GPU")
    _add_number(s, "--mem-gb", Positive, default=None)
    _add_number(s, "--array-parallelism", Count, default=None, help="most jobs at a time")
    _add_number(s, "--runs-per-gpu", Count, default=None, metavar="K",
                help="pack K runs into each job, running concurrently on its GPU (default: the spec's, or 1)")
    s.add_argument("--rerun-stale", action="store_true",
                   help="archive the records whose code's behaviour has changed since (stale), then run those cells "
                        "again; the archived records stay readable (`leaderboard --include-archived`)")
    s.add_argument("overrides", nargs="*", help="dotted overrides applied to every run")
    s.set_defaults(fn=_cmd_sweep)

    st_ = sub.add_parser("status", help="done / running / pending / failed per run of a sweep's output folder")
    st_.add_argument("output_dir")
    st_.add_argument("--no-probe", action="store_true",
                     help="answer from the fingerprints cached for the code installed now; records whose key has none "
                          "read unknown instead of done or stale (the probe runs once per code state otherwise)")
    st_.set_defaults(fn=_cmd_status)

    lb = sub.add_parser("leaderboard", help="render markdown + PNG leaderboards (and LaTeX, CSV) from run records")
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
    lb.set_defaults(fn=_cmd_leaderboard)

    ps = sub.add_parser("plan-seeds", help="seeds a sweep needs to detect a given accuracy difference vs its baseline")
    ps.add_argument("records_dir", nargs="?", default=None,
                    help="a pilot sweep's records: plans from the variance of each of its comparisons")
    ps.add_argument("--delta", default="1,2,3,5", help="target differences, percentage points (default 1,2,3,5)")
    ps.add_argument("--baseline", default="supervised")
    _add_number(ps, "--power", Fraction, default=0.8)
    _add_number(ps, "--alpha", Fraction, default=0.05)
    _add_number(ps, "--comparisons", Count, default=1, metavar="M",
                help="plan for alpha / M, to stay significant after Holm's correction over M comparisons")
    _add_number(ps, "--sd-seed", Points, default=None, metavar="POINTS",
                help="instead of records: SD of one seed's paired difference (a CSV's delta_sd_seed)")
    _add_number(ps, "--se-image", PointsOrZero, default=0.0, metavar="POINTS",
                help="with --sd-seed: SE of the difference from the test images (a CSV's delta_se_image)")
    ps.set_defaults(fn=_cmd_plan_seeds)

    dm = sub.add_parser("demo", help="supervised vs FixMatch on synthfer, 2 budgets x 3 seeds, + leaderboard")
    dm.add_argument("--output-dir", default=None, help="default: runs/demo")
    dm.add_argument("--leaderboard-dir", default="leaderboards")
    dm.add_argument("--full", action="store_true", help="the longer demo spec (more methods)")
    dm.add_argument("overrides", nargs="*")
    dm.set_defaults(fn=_cmd_demo)
    return p


def _dispatch(argv: list[str] | None) -> int:
    # threads and OpenMP wait policy, before any command loads torch; a setting that cannot be read stops here
    configure()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # numbers are checked as they are parsed (`_number`)
    if extra:  # dotted overrides may follow the flags (`sweep SPEC --dry-run data.root=X`)
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    return args.fn(args)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched at run time
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        return _dispatch(argv)
    except FERBenchError as e:
        print(f"ferbench: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a file-size limit, a folder that cannot be written: one line
        where = f"{e.filename}: " if e.filename else ""
        print(f"ferbench: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ferbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
