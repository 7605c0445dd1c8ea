"""Leaderboards from a records folder: its records (and their predictions) read, rendered, the files listed."""

from __future__ import annotations

from pathlib import Path

from bench.errors import FERBenchError


def render_records(records_dir: Path, out: Path, baseline: str, formats: tuple[str, ...] = ("md",),
                   interval: str = "combined", reported: Path | None = None) -> list[Path]:
    """Render every leaderboard of the records under `records_dir` into `out`; prints what it wrote (and what it
    skipped) and returns the files."""
    from bench.results.leaderboard import render_leaderboards
    from bench.results.record import read_predictions, scan_records

    if not records_dir.is_dir():
        raise FERBenchError(f"{records_dir}: records folder not found")
    scan = scan_records(records_dir)
    if note := scan.skipped_note():
        print(f"ferbench: {note}")
    if not scan.files:
        raise FERBenchError(f"{records_dir}: no run records found")
    predictions = {rec["run_id"]: a for path, rec in scan.files if (a := read_predictions(path, rec)) is not None}
    paths = render_leaderboards([rec for _, rec in scan.files], out, baseline=baseline, predictions=predictions,
                                formats=formats, interval=interval, reported=reported)
    for p in paths:
        print(f"wrote {p}")
    return paths
