"""Running a sweep: every cell built and checked first, then run here one after another, or submitted as jobs
(SLURM, local subprocesses); the leaderboards regenerated when its records are in.

What `ferbench sweep` and `ferbench demo` do; the CLI only parses their arguments.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import RunConfig
from bench.launch.pack import check_runs_per_gpu
from bench.launch.sweep import SweepSpec, cells, load_sweep, run_local, settle_output_dir, validate_cells

SWEEP_FORMATS = ("md", "tex", "csv")  # what a sweep's leaderboard_dir gets
SWEEP_BASELINE = "supervised"


@dataclass
class SweepRequest:
    """A sweep as the command line asks for it."""

    spec: Path
    overrides: list[str] = field(default_factory=list)
    dry_run: bool = False
    leaderboard_dir: str | None = None  # default: the spec's
    executor: str = "inline"  # inline | slurm | local | debug
    cluster: dict[str, Any] = field(default_factory=dict)  # command-line resources over the spec's `cluster`
    wait: bool = False
    runs_per_gpu: int | None = None
    rerun_stale: bool = False  # archive the records the code no longer reproduces, then run those cells again


def run_sweep(req: SweepRequest) -> int:
    """Build and check every cell, then run or submit those without a record; the exit status."""
    spec = load_sweep(req.spec)
    if req.runs_per_gpu is not None:
        spec.runs_per_gpu = check_runs_per_gpu(req.runs_per_gpu, "--")
    labelled = cells(spec, req.overrides)
    runs = [cfg for _, cfg in labelled]
    settle_output_dir(spec, runs)  # an output_dir override moves the submission log and job logs too
    validate_cells(spec, labelled)  # every cell, before any data is prepared, run started or job submitted
    _settle_archive(spec, req.dry_run)
    if req.rerun_stale:
        _archive_stale(spec, runs, req.dry_run)
    out = req.leaderboard_dir or spec.leaderboard_dir
    if req.executor != "inline":
        return _submit(spec, runs, req, out)
    from bench.engine.trainer import run_paths

    todo = [c for c in runs if not run_paths(c).record.exists()]
    print(f"sweep {spec.name}: {len(runs)} runs, {len(runs) - len(todo)} already done, {len(todo)} to run")
    if spec.runs_per_gpu > 1:
        print(f"  runs_per_gpu={spec.runs_per_gpu} packs runs into jobs of --executor slurm|local|debug; "
              "here they run one after another")
    if req.dry_run:
        _list(todo)
        return 0
    t0 = time.perf_counter()
    records, failures = run_local(runs)
    print(f"sweep {spec.name}: {len(records)} records, {len(failures)} failed, {time.perf_counter() - t0:.0f} s")
    if out and records:
        _render(spec, out)
    for cfg, err in failures:
        print(f"ferbench: run failed: {cfg.method} budget={cfg.data.budget:g} seed={cfg.seed}: {err}", file=sys.stderr)
    return 1 if failures else 0


def _settle_archive(spec: SweepSpec, dry_run: bool) -> None:
    """Put back what an interrupted `--rerun-stale` left half-archived, before the sweep decides what is done."""
    from bench.results.archive import ARCHIVE, STAGING, settle

    if dry_run:
        if any((Path(spec.output_dir) / ARCHIVE).glob(f"{STAGING}*")):
            print(f"sweep {spec.name}: an interrupted archive would be rolled back first")
    elif settle(spec.output_dir):
        print(f"sweep {spec.name}: rolled back an interrupted archive (every record back in place)")


def _archive_stale(spec: SweepSpec, runs: list[RunConfig], dry_run: bool) -> None:
    """Move the records of the sweep's stale cells (their code's behaviour changed since) into an archive, so the
    sweep runs those cells again; nothing is deleted or overwritten (`ferbench leaderboard --include-archived`)."""
    from bench.engine.trainer import run_paths
    from bench.results.archive import archive_runs
    from bench.results.freshness import assess
    from bench.results.record import read_record_file

    done = [read_record_file(p) for c in runs if (p := run_paths(c).record).exists()]
    fresh = assess(done)
    stale = sorted(rid for rid, f in fresh.items() if f.state == "stale")
    if not stale:
        print(f"sweep {spec.name}: no stale records ({len(done)} done)")
        return
    if dry_run:
        print(f"sweep {spec.name}: {len(stale)} stale record(s) would be archived and run again: {', '.join(stale)}")
        return
    folder = archive_runs(spec.output_dir, stale)
    if folder is None:  # another --rerun-stale archived them meanwhile
        print(f"sweep {spec.name}: the stale records were archived meanwhile by another process")
        return
    print(f"sweep {spec.name}: archived {len(stale)} stale record(s) under {folder}; they run again")


def _list(todo: list[RunConfig]) -> None:
    for c in todo:
        recipe = "" if c.recipe == "harness" else f" recipe={c.recipe}"
        print(f"  {c.method}{recipe} {c.data.protocol}={c.data.budget:g} seed={c.seed}")


def _render(spec: SweepSpec, out: str) -> None:
    from bench.results.render import render_records

    render_records(Path(spec.output_dir) / "records", Path(out), SWEEP_BASELINE, formats=SWEEP_FORMATS)


def _submit(spec: SweepSpec, runs: list[RunConfig], req: SweepRequest, out: str | None) -> int:
    from bench.launch.executor import ClusterParams, pending_runs, submit_runs, wait_for

    cluster = {**spec.cluster, **{k: v for k, v in req.cluster.items() if v is not None}}
    params = ClusterParams.from_mapping(cluster, f"sweep {spec.name}")
    todo, done, live = pending_runs(runs, spec.output_dir)
    print(f"sweep {spec.name}: {len(runs)} runs, {done} already done, {live} already submitted and not over, "
          f"{len(todo)} to submit ({req.executor})")
    if req.dry_run or not todo:
        _list(todo)
        return 0
    prepare_data(todo)
    jobs = submit_runs(todo, req.executor, spec.output_dir, spec.name, params, spec.runs_per_gpu)
    ids = sorted({str(j.job_id).split("_")[0] for j in jobs})
    packed = f" ({len(jobs)} jobs of up to {spec.runs_per_gpu} runs)" if spec.runs_per_gpu > 1 else ""
    print(f"submitted {len(todo)} runs as job(s) {', '.join(ids)}{packed}; follow with: ferbench status "
          f"{spec.output_dir}")
    if not req.wait:
        return 0
    failed = [(j, e) for j, e in wait_for(jobs) if e is not None]
    for job, err in failed:
        print(f"ferbench: job {job.job_id} failed: {err} (log {job.paths.stderr})", file=sys.stderr)
    records_dir = Path(spec.output_dir) / "records"
    if out and records_dir.is_dir() and any(records_dir.glob("*.json")):
        _render(spec, out)
    return 1 if failed else 0


def prepare_data(runs: list[RunConfig]) -> None:
    """Build each distinct dataset cache here, once, before the jobs start: they then only read it, and a
    bad dataset fails now rather than in every job."""
    from bench.data.cache import default_cache_dir, prepare_dataset

    seen = set()
    for cfg in runs:
        d = cfg.data
        options = d.reader_options()
        key = (d.name, d.root, d.image_size, str(default_cache_dir(d.cache_dir)), repr(sorted(options.items())),
               d.label_protocol, d.on_bad_image)
        if key not in seen:
            seen.add(key)
            prepare_dataset(d.name, d.root, d.image_size, str(default_cache_dir(d.cache_dir)), options,
                            d.on_bad_image, progress=True, label_protocol=d.label_protocol)
