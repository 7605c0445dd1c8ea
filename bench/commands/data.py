"""`ferbench data verify | stats | prepare`: check a raw dataset, count it, decode it into the prepared cache."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from bench.commands.options import Subparsers, add_number, console
from bench.config import Count, ImageSide, NonNegativeInt, Positive
from bench.errors import FERBenchError


def add_parser(subparsers: Subparsers) -> None:
    d = subparsers.add_parser("data", help="dataset tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    ver = dsub.add_parser("verify", help="check the layout, every label entry and every image; writes nothing")
    _dataset_args(ver)
    add_number(ver, "--workers", Count, default=None)
    add_number(ver, "--show", NonNegativeInt, default=10, help="problems listed per kind")
    ver.set_defaults(fn=_verify)
    st = dsub.add_parser("stats", help="images per split and class, what the protocol drops, and a bar chart")
    _dataset_args(st)
    st.add_argument("--budget-protocol", default="fraction", choices=("fraction", "total", "per_class"))
    add_number(st, "--budget", Positive, default=None, help="also show the labeled counts of this budget")
    st.add_argument("--out", default=None, help="PNG path (default: <dataset>-stats.png)")
    st.set_defaults(fn=_stats)
    prep = dsub.add_parser("prepare", help="decode a dataset into the prepared cache (reused when unchanged)")
    _dataset_args(prep)
    add_number(prep, "--image-size", ImageSide, default=48)
    prep.add_argument("--on-bad-image", choices=("fail", "skip"), default="fail")
    add_number(prep, "--workers", Count, default=None)
    prep.set_defaults(fn=_prepare)


def _dataset_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("dataset", help="rafdb, affectnet7, affectnet8, ferplus or synthfer")
    sp.add_argument("--root", default=None, help="the raw dataset folder (not needed for synthfer)")
    sp.add_argument("--protocol", default=None, help="label protocol (ferplus: majority8 | argmax7)")
    sp.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                    help="reader option, e.g. images=original (rafdb), train_with_valid=true (ferplus), "
                         "layout=csv|npy (affectnet)")
    sp.add_argument("--cache-dir", default=None)
    add_number(sp, "--n-train", Count, default=6000, help="synthfer only")
    add_number(sp, "--n-test", Count, default=1500, help="synthfer only")
    add_number(sp, "--synth-seed", NonNegativeInt, default=0, help="synthfer only")


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


def _class_table(title: str, names: tuple[str, ...], codes: dict[int, int], columns: dict[str, list[int]]) -> Any:
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


def _print_dropped(out: Any, report: Any) -> None:
    for (split, reason), n in sorted(report.dropped.items()):
        out.print(f"  dropped from {split}: {n:,} ({reason})")


def _verify(args: argparse.Namespace) -> int:
    from bench.data.inspect import check_images, survey

    t0 = time.perf_counter()
    sv = survey(args.dataset, args.root, args.protocol, _reader_options(args), args.cache_dir, strict=False)
    problems = list(sv.report.problems) + check_images(sv.records, args.workers, progress=True)
    out = console()
    counts = sv.counts()
    out.print(f"{sv.key} at {args.root}: {'; '.join(sv.report.notes)}")
    out.print(f"  {len(sv.records):,} labelled entries: " + ", ".join(f"{s} {sum(v):,}" for s, v in counts.items()))
    _print_dropped(out, sv.report)
    if not problems:
        out.print(f"verify {sv.key}: OK, every entry parsed and every image decoded "
                  f"({time.perf_counter() - t0:.1f} s)")
        return 0
    by_kind: dict[str, list] = {}
    for pr in problems:
        by_kind.setdefault(pr.kind, []).append(pr)
    for kind, items in sorted(by_kind.items()):
        out.print(f"  {kind}: {len(items):,}")
        for pr in items[: args.show]:
            out.print(f"    {pr}", markup=False, highlight=False)
        if len(items) > args.show:
            out.print(f"    ... and {len(items) - args.show:,} more")
    summary = ", ".join(f"{len(v):,} {k}" for k, v in sorted(by_kind.items()))
    print(f"ferbench: verify {sv.key}: {len(problems):,} problem(s): {summary}", file=sys.stderr)
    return 1


def _stats(args: argparse.Namespace) -> int:
    from bench.data.inspect import survey
    from bench.data.splits import labeled_counts
    from bench.results.plots import budget_label, plot_class_counts

    sv = survey(args.dataset, args.root, args.protocol, _reader_options(args), args.cache_dir, strict=True)
    columns = sv.counts()
    if args.budget is not None:
        want = labeled_counts(columns["train"], args.budget_protocol, args.budget, list(sv.class_names))
        columns[f"labeled {budget_label(args.budget_protocol, args.budget)}"] = want
    out = console()
    out.print(f"{sv.key} at {args.root}: {'; '.join(sv.report.notes)}")
    out.print(_class_table(f"{sv.key}: images per class", sv.class_names, sv.native_codes(), columns))
    _print_dropped(out, sv.report)
    png = Path(args.out or f"{sv.key}-stats.png")
    plot_class_counts(f"{sv.key}: images per class", sv.class_names, columns, png)
    out.print(f"wrote {png}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from bench.data.cache import load_prepared, prepare_dataset

    t0 = time.perf_counter()
    path = prepare_dataset(args.dataset, args.root, args.image_size, args.cache_dir, _reader_options(args),
                           args.on_bad_image, workers=args.workers, progress=True, label_protocol=args.protocol)
    data = load_prepared(path)
    info = data.info
    bad = info.get("bad_images", [])
    out = console()
    codes = {int(c): code for c, code in info.get("native_codes", {}).items()}
    out.print(_class_table(f"{data.name} at {args.image_size}px", data.class_names, codes,
                           {s: info["counts"][s]["per_class"] for s in ("train", "test")}))
    for what, n in info.get("dropped", {}).items():
        out.print(f"  dropped from {what.split(': ', 1)[0]}: {n:,} ({what.split(': ', 1)[1]})")
    for b in bad[: 10]:
        out.print(f"  skipped unreadable image {b['path']}: {b['error']}", markup=False, highlight=False)
    print(f"prepared {data.name}: {len(data.train.ids)} train + {len(data.test.ids)} test images at "
          f"{args.image_size}px in {path} ({time.perf_counter() - t0:.1f} s; {len(bad)} unreadable skipped)")
    return 0
