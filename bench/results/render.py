"""Leaderboards from a records folder: its records (and their predictions) read, rendered, the files listed."""

from __future__ import annotations

import sys
from pathlib import Path

from bench.errors import FERBenchError


def _say(line: str) -> None:
    print(f"leaderboard: {line}", file=sys.stderr, flush=True)


def render_records(records_dir: Path, out: Path, baseline: str, *, formats: tuple[str, ...] = ("md",),
                   interval: str = "combined", reported: Path | None = None, baseline_given: bool = False,
                   include_archived: bool = False, probe: bool = True) -> list[Path]:
    """Render every leaderboard of the records under `records_dir` into `out`, each cell marked when its records no
    longer describe the code (stale); prints what it wrote (and what it skipped) and returns the files. A
    `baseline` the user named (`baseline_given`) must be among the records' methods; otherwise a Δ table is drawn
    only when the default baseline ran. `include_archived`: also the records `--rerun-stale` archived, each in a row
    of its own."""
    from bench.results.archive import archived_record_dirs, as_archived, settle
    from bench.results.freshness import assess
    from bench.results.leaderboard import render_leaderboards
    from bench.results.record import load_with_predictions

    if out.exists() and not out.is_dir():
        raise FERBenchError(f"{out}: exists and is not a folder; the leaderboards go into a folder (-o FOLDER)")
    if reported is not None and not reported.is_file():
        raise FERBenchError(f"--reported {reported}: file not found")
    if settle(Path(records_dir).parent):
        _say("rolled back an interrupted archive of stale records (every record back in place)")
    records, predictions = load_with_predictions(records_dir)
    if include_archived:
        for folder in archived_record_dirs(records_dir):
            old, old_predictions = load_with_predictions(folder)
            archive = folder.parent.name
            records += [as_archived(dict(rec), archive) for rec in old]
            predictions.update({f"{rid}@{archive}": a for rid, a in old_predictions.items()})
    methods = sorted({rec["method"] for rec in records})
    if baseline_given and baseline not in methods:
        raise FERBenchError(f"--baseline {baseline}: no record of that method in {records_dir} (its methods: "
                            f"{', '.join(methods)})")
    paths = render_leaderboards(records, out, baseline=baseline, predictions=predictions, formats=formats,
                                interval=interval, reported=reported,
                                freshness=assess(records, probe=probe, announce=_say))
    for p in paths:
        print(f"wrote {p}")
    return paths
