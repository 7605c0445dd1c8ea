"""`ferbench bench prepare | memory | train`: speed and memory benchmarks."""

from __future__ import annotations

import argparse
from typing import Annotated

from bench.checks import Interval, check_value, describe
from bench.commands.options import Subparsers, add_number
from bench.config import Count, ImageSide, NonNegative, NonNegativeInt
from bench.errors import FERBenchError

#: `ferbench bench train` flags that are shortcuts for config overrides
BENCH_TRAIN_FLAGS = {"image_size": "data.image_size", "batch_size": "train.batch_size", "mu": "train.mu",
                     "backbone": "model.backbone", "augment_on": "data.augment_on", "compile": "train.compile",
                     "channels_last": "train.channels_last", "mixed_precision": "train.mixed_precision",
                     "workers": "data.workers", "n_train": "data.synthfer.n_train", "cache_dir": "data.cache_dir"}


#: `ferbench bench train` flags of the contention mode only
CONTENTION_FLAGS = ("policies", "threads", "busy", "busy_pinned", "repeats", "rounds", "wait_quiet")
CONTENTION_NUMBERS = ("busy", "repeats", "rounds", "wait_quiet")


def add_parser(subparsers: Subparsers) -> None:
    b = subparsers.add_parser("bench", help="speed benchmarks")
    bsub = b.add_subparsers(dest="bench_command", required=True)
    bp = bsub.add_parser("prepare", help="images/s of preparing JPEGs into the cache, 1 vs N workers")
    add_number(bp, "--n", Annotated[int, Interval("[14, inf)")], default=20000, help="number of JPEGs")
    add_number(bp, "--size", ImageSide, default=100, help="JPEG side in pixels")
    add_number(bp, "--image-size", ImageSide, default=100, help="prepared image side")
    add_number(bp, "--workers", Count, default=2)
    bp.add_argument("--work-dir", default=None, help="where to write the JPEGs (default: the system temp folder)")
    bp.add_argument("--json", default=None, help="also write the results here")
    bp.set_defaults(fn=_prepare)
    bm = bsub.add_parser("memory", help="peak RSS of a short training run against the size of its prepared cache")
    add_number(bm, "--n", Annotated[int, Interval("[70, inf)")], default=150_000,
               help="number of JPEGs (a tenth are test images)")
    add_number(bm, "--size", ImageSide, default=64, help="JPEG side in pixels")
    add_number(bm, "--image-size", ImageSide, default=64, help="prepared image side")
    add_number(bm, "--iterations", Count, default=50, help="training iterations of the measured run")
    bm.add_argument("--work-dir", default=None, help="where to write the JPEGs and the cache (default: temp)")
    bm.add_argument("--json", default=None, help="also write the results here")
    bm.set_defaults(fn=_memory)
    bt = bsub.add_parser("train", help="images/s of N training steps end to end vs the pure-compute ceiling")
    _train_args(bt)
    _contention_args(bt)
    bt.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. model.head=normalized")
    bt.set_defaults(fn=_train)


def _train_args(bt: argparse.ArgumentParser) -> None:
    bt.add_argument("method")
    add_number(bt, "--steps", Count, default=20, help="timed steps per measurement")
    add_number(bt, "--warmup", NonNegativeInt, default=3, help="untimed steps first (compilation, workers starting)")
    add_number(bt, "--image-size", ImageSide, default=None, help="data.image_size (default 112)")
    add_number(bt, "--batch-size", Count, default=None, help="train.batch_size: labeled B, unlabeled mu * B "
                                                             "(default 128)")
    add_number(bt, "--mu", NonNegativeInt, default=None, help="train.mu (default 7)")
    bt.add_argument("--backbone", default=None, help="model.backbone (default resnet18)")
    bt.add_argument("--augment-on", default=None, help="data.augment_on, measured first: device | cpu")
    bt.add_argument("--compile", default=None, help="train.compile: none | default | reduce-overhead")
    bt.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                    help="train.channels_last (default: on with CUDA)")
    bt.add_argument("--mixed-precision", default=None, help="train.mixed_precision: no | bf16 | fp16 (default: bf16 "
                                                            "with CUDA, else no)")
    add_number(bt, "--workers", NonNegativeInt, default=None, help="data.workers of the CPU path (default: CPUs - 1)")
    add_number(bt, "--n-train", Count, default=None, help="data.synthfer.n_train: images generated (default "
                                                          "2000)")
    bt.add_argument("--cache-dir", default=None, help="data.cache_dir")
    bt.add_argument("--no-cpu-path", action="store_true", help="skip the augment_on=cpu comparison")
    bt.add_argument("--json", default=None, help="also write the results here")
    bt.add_argument("--stage", default=None, help="a multi-stage method's stage to measure (default: its last)")


def _contention_args(bt: argparse.ArgumentParser) -> None:
    bt.add_argument("--contention", action="store_true",
                    help="images/s idle and with busy processes holding cores, per OpenMP wait policy and thread "
                         "count, each in a fresh process; prints the ratios")
    bt.add_argument("--policies", default=None, help="--contention: wait policies, comma-separated: spin (libgomp's "
                                                     "default), passive, active, spincount=N (default: spin, "
                                                     "passive and spin counts 0 to 100000)")
    bt.add_argument("--threads", default=None, help="--contention: thread counts, comma-separated (default: the "
                                                    "cores this process may use, and 1)")
    add_number(bt, "--busy", Count, default=None, help="--contention: competing busy processes (default 1)")
    bt.add_argument("--busy-pinned", action="store_true", help="--contention: pin each busy process to one CPU")
    add_number(bt, "--repeats", Count, default=None, help="--contention: idle/contended pairs per process "
                                                          "(default 1)")
    add_number(bt, "--rounds", Count, default=None, help="--contention: passes over all settings, medians "
                                                         "shown (default 1)")
    add_number(bt, "--wait-quiet", NonNegative, default=None, metavar="SECONDS",
               help="--contention, on a shared machine: before each measurement, wait up to SECONDS for the "
                    "other processes to use under 0.2 of this process's cores")


def _prepare(args: argparse.Namespace) -> int:
    from bench.benchmarks.prepare_speed import run_prepare_benchmark

    run_prepare_benchmark(args.n, args.size, args.image_size, args.workers, args.work_dir, args.json)
    return 0


def _memory(args: argparse.Namespace) -> int:
    from bench.benchmarks.memory import run_memory_benchmark

    run_memory_benchmark(args.n, args.size, args.image_size, args.iterations, args.work_dir, args.json)
    return 0


def _int_list(flag: str, text: str) -> list[int]:
    try:
        return check_value([int(v) for v in text.split(",") if v.strip()], list[Count], flag)
    except (ValueError, FERBenchError):
        raise FERBenchError(f"bench train --{flag} {text!r}: expected whole numbers separated by commas, each "
                            f"{describe(Count)}") from None


def _train(args: argparse.Namespace) -> int:
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
