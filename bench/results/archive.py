"""Archived records: what `ferbench sweep --rerun-stale` moves aside before re-running a stale cell, never deleting
or overwriting it, and what `ferbench leaderboard --include-archived` reads back.

A sweep's folder holds `records/` and `runs/`; an archive is `archive/<UTC time>/` holding the same two folders
for the runs it took (the record, its predictions file, its run folder with the final weights), so every
reference a record makes to its files still holds there.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

ARCHIVE = "archive"


def archive_runs(output_dir: str | Path, run_ids: list[str]) -> Path:
    """Move the records, predictions and run folders of `run_ids` under `<output_dir>/archive/<UTC time>/`."""
    out = Path(output_dir)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    folder = out / ARCHIVE / stamp
    n = 1
    while folder.exists():  # two archives in one second: never into the same folder
        n += 1
        folder = out / ARCHIVE / f"{stamp}-{n}"
    (folder / "records").mkdir(parents=True)
    (folder / "runs").mkdir()
    for rid in run_ids:
        for path in sorted((out / "records").glob(f"{rid}.*")):  # the record and its predictions
            os.replace(path, folder / "records" / path.name)
        if (out / "runs" / rid).exists():
            os.replace(out / "runs" / rid, folder / "runs" / rid)
    return folder


def archived_record_dirs(records_dir: str | Path) -> list[Path]:
    """The `records/` folders of the archives beside `records_dir` (a sweep's `<output_dir>/records`), oldest first."""
    root = Path(records_dir).parent / ARCHIVE
    return sorted(p / "records" for p in root.iterdir() if (p / "records").is_dir()) if root.is_dir() else []


def as_archived(record: dict[str, Any], archive: str) -> dict[str, Any]:
    """A copy of an archived record whose method reads `<method>+archived-<fingerprint or archive>` and whose run id is
    unique, so a leaderboard shows it in a row of its own, never averaged with the current runs of its cell."""
    fp = record.get("fingerprint")
    tag = fp.get("digest", archive)[:8] if isinstance(fp, dict) else archive
    return {**record, "method": f"{record['method']}+archived-{tag}", "run_id": f"{record['run_id']}@{archive}"}
