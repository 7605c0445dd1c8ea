"""Archived records: what `ferbench sweep --rerun-stale` moves aside before re-running a stale cell, never deleting
or overwriting it, and what `ferbench leaderboard --include-archived` reads back.

A sweep's folder holds `records/` and `runs/`; an archive is `archive/<UTC time>/` holding the same two folders
for the runs it took (the record, its predictions file, its run folder with the final weights), so every
reference a record makes to its files still holds there.

An archive appears whole or not at all, whatever stops the process (SIGKILL, a full disk, a read-only file):

1. under an exclusive lock (`archive/.lock`: a second `--rerun-stale` waits, then finds the runs already taken);
2. a hidden staging folder `archive/.staging-<time>/` gets a journal of the moves first, then each file is
   renamed into it (the record first, so an interrupted archive never leaves a live record without its files);
3. renaming the staging folder to `archive/<time>/` is the commit: one atomic step.

A staging folder left by an interrupted archive is rolled back (`settle`: every file renamed back to where it was)
by the next sweep, `leaderboard` or `status` of the folder; readers never read one. A failed rename rolls back at
once and is one line saying nothing was archived.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.errors import FERBenchError
from bench.results.record import read_json_file, write_json_atomic

ARCHIVE = "archive"
STAGING = ".staging-"
JOURNAL = "journal.json"


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """The archive folder's exclusive lock (released by the kernel if the holder dies)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _moves(out: Path, run_ids: list[str]) -> list[str]:
    """The paths (relative to `out`) an archive of `run_ids` moves, each run's record first; runs whose record is
    gone (archived by another process meanwhile) are left out."""
    moves = []
    for rid in run_ids:
        record = out / "records" / f"{rid}.json"
        if not record.is_file():
            continue
        others = sorted(p for p in (out / "records").glob(f"{rid}.*") if p != record)
        moves += [f"records/{record.name}", *(f"records/{p.name}" for p in others)]
        if (out / "runs" / rid).exists():
            moves.append(f"runs/{rid}")
    return moves


def _new_name(root: Path) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name, n = stamp, 1
    while (root / name).exists() or (root / f"{STAGING}{name}").exists():  # two archives in one second
        n += 1
        name = f"{stamp}-{n}"
    return name


def archive_runs(output_dir: str | Path, run_ids: list[str]) -> Path | None:
    """Move the records, predictions and run folders of `run_ids` under `<output_dir>/archive/<UTC time>/`, all
    or none; the archive folder, or None when none of the runs has a record (any more). Raises FERBenchError, with
    everything back where it was, when a file cannot be moved."""
    out = Path(output_dir)
    root = out / ARCHIVE
    try:
        with _locked(root):
            _settle_locked(out)
            moves = _moves(out, run_ids)
            if not moves:
                return None
            name = _new_name(root)
            staging = root / f"{STAGING}{name}"
            try:
                _stage(out, staging, moves, name)
                os.replace(staging, root / name)  # the commit
            except OSError as e:
                _undo(out, staging, e)
                raise
    except OSError as e:
        raise FERBenchError(f"{out}: could not archive the stale records ({_why(e)}); nothing was archived, every "
                            "record is where it was") from e
    return root / name


def _why(e: OSError) -> str:
    return f"{e.strerror or e}: {e.filename}" if e.filename else str(e.strerror or e)


def _undo(out: Path, staging: Path, cause: OSError) -> None:
    """Roll a failed archive back; if even that fails, say where the moved files wait (the next `settle`)."""
    try:
        stuck = _roll_back(out, staging)
    except OSError as e:
        raise FERBenchError(f"{out}: archiving failed ({_why(cause)}) and so did putting the records back "
                            f"({_why(e)}); they wait in {staging}, and the next sweep, leaderboard or status of "
                            "this folder puts them back") from e
    if stuck:
        raise FERBenchError(f"{staging}: archiving failed ({_why(cause)}); {stuck[0]} could not go back, its place "
                            "is taken") from cause


def _stage(out: Path, staging: Path, moves: list[str], name: str) -> None:
    staging.mkdir()
    write_json_atomic(staging / JOURNAL, {"archive": name, "moves": moves})  # before any move: a rollback's map
    for rel in moves:
        (staging / rel).parent.mkdir(exist_ok=True)
        os.replace(out / rel, staging / rel)


def _roll_back(out: Path, staging: Path) -> list[str]:
    """Rename everything the journal in `staging` moved back to its place, then remove `staging`; the paths that
    could not go back (their place is taken), left in `staging`."""
    if not staging.is_dir():  # it was never made
        return []
    journal = staging / JOURNAL
    moves = read_json_file(journal, "an archive journal").get("moves", []) if journal.is_file() else []
    stuck = []
    for rel in reversed(moves):
        if (staging / rel).exists() or (staging / rel).is_symlink():
            if (out / rel).exists():
                stuck.append(rel)
            else:
                os.replace(staging / rel, out / rel)
    if not stuck:
        shutil.rmtree(staging)
    return stuck


def _settle_locked(out: Path) -> None:
    for staging in sorted((out / ARCHIVE).glob(f"{STAGING}*")):
        stuck = _roll_back(out, staging)
        if stuck:
            raise FERBenchError(f"{staging}: an interrupted archive holds {stuck[0]}, whose place in {out} is taken "
                                "again; move one of the two aside by hand")


def settle(output_dir: str | Path) -> bool:
    """Roll back what an interrupted archive of `output_dir` left half-done (every file back where it was);
    whether there was anything to do. Cheap when there is nothing."""
    out = Path(output_dir)
    if not any((out / ARCHIVE).glob(f"{STAGING}*")):
        return False
    try:
        with _locked(out / ARCHIVE):
            _settle_locked(out)
    except OSError as e:
        raise FERBenchError(f"{out}: an interrupted archive could not be rolled back ({_why(e)})") from e
    return True


def archived_record_dirs(records_dir: str | Path) -> list[Path]:
    """The `records/` folders of the archives beside `records_dir` (a sweep's `<output_dir>/records`) that hold
    records, oldest first (staging folders of an archive in progress are not archives)."""
    root = Path(records_dir).parent / ARCHIVE
    if not root.is_dir():
        return []
    return sorted(p / "records" for p in root.iterdir()
                  if not p.name.startswith(".") and (p / "records").is_dir() and any((p / "records").glob("*.json")))


def as_archived(record: dict[str, Any], archive: str) -> dict[str, Any]:
    """A copy of an archived record whose method reads `<method>+archived-<fingerprint or archive>` and whose run id is
    unique, so a leaderboard shows it in a row of its own, never averaged with the current runs of its cell."""
    fp = record.get("fingerprint")
    tag = fp.get("digest", archive)[:8] if isinstance(fp, dict) else archive
    return {**record, "method": f"{record['method']}+archived-{tag}", "run_id": f"{record['run_id']}@{archive}"}
