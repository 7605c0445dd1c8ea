"""`sweep --rerun-stale` archives whole or not at all (issue 32): killed (SIGKILL) at every step of archiving, failing
at every step (a full disk, a read-only file), or racing a second archiver, every record ends whole with its
predictions and run folder, either in place or in one archive, and `leaderboard --include-archived` reads it."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_leaderboard import make_record

from bench.cli import main
from bench.errors import FERBenchError
from bench.results.archive import ARCHIVE, STAGING, archive_runs, settle
from bench.results.record import write_predictions

REPO = Path(__file__).resolve().parents[1]
RUNS = [("supervised", 0), ("supervised", 1), ("fixmatch", 0)]
TAKEN = 2  # the first two runs are archived
PREDICTED, TARGETS = [0, 1, 1, 0], [0, 1, 0, 0]
FINAL = {"accuracy": 0.75, "mean_class_accuracy": 0.8333333333333333, "macro_f1": 0.7333333333333334,
         "per_class_recall": [2 / 3, 1.0], "confusion_matrix": [[2, 1], [0, 1]]}


def _sweep(out: Path) -> list[str]:
    """A sweep folder of finished runs: each a record naming its predictions file, a run folder with weights and
    a checkpoint."""
    ids = []
    for method, seed in RUNS:
        rec = make_record(method, seed, 0.75)
        rec["metrics"]["final"], rec["metrics"]["n_test"] = dict(FINAL), 4  # what its predictions give
        rid = rec["run_id"]
        record = out / "records" / f"{rid}.json"
        record.parent.mkdir(parents=True, exist_ok=True)
        rec["predictions"] = write_predictions(record, PREDICTED, TARGETS, ["a", "b", "c", "d"])
        (out / "runs" / rid / "checkpoint").mkdir(parents=True)
        (out / "runs" / rid / "final_model.pth").write_bytes(os.urandom(64))
        (out / "runs" / rid / "checkpoint" / "model.safetensors").write_bytes(os.urandom(32))
        record.write_text(json.dumps(rec))
        ids.append(rid)
    return ids


def _files(base: Path) -> dict[str, str]:
    return {str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(base.rglob("*")) if p.is_file()}


def _live_and_archived(out: Path) -> dict[str, list[str]]:
    """Every file of the sweep (relative to its sweep or archive folder) -> where it is (live, or an archive)."""
    where: dict[str, list[str]] = {}
    for rel in _files(out):
        top = rel.split("/")[0]
        if top in ("records", "runs"):
            where.setdefault(rel, []).append("live")
        elif top == ARCHIVE and not rel.endswith((".lock", "journal.json")):
            _, name, inner = rel.split("/", 2)
            where.setdefault(inner, []).append(name)
    return where


def _check_whole(out: Path, before: dict[str, str], ids: list[str]) -> None:
    """Every file of `before` is in exactly one place, unchanged, and each run's files are all in the same one."""
    settle(out)
    assert not list((out / ARCHIVE).glob(f"{STAGING}*"))
    where = _live_and_archived(out)
    assert set(where) == set(before) and all(len(v) == 1 for v in where.values()), where
    for rid in ids:
        places = {where[rel][0] for rel in before if rid in rel}
        assert len(places) == 1, (rid, places)  # a run never split between its place and an archive
    for rel, places in where.items():
        base = out if places[0] == "live" else out / ARCHIVE / places[0]
        assert hashlib.sha256((base / rel).read_bytes()).hexdigest() == before[rel]
    archives = [p for p in (out / ARCHIVE).iterdir() if p.is_dir()] if (out / ARCHIVE).exists() else []
    assert len(archives) <= 1 and all(any((a / "records").glob("*.json")) for a in archives)


KILLER = textwrap.dedent("""
    import os, signal, sys, time
    from bench.results import archive
    at, count = int(sys.argv[2]), [0]
    def step(f):
        def wrapped(*a, **k):
            count[0] += 1
            if count[0] == at:
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(float(os.environ.get("STEP_DELAY", "0")))
            return f(*a, **k)
        return wrapped
    os.replace, os.mkdir, os.rename = step(os.replace), step(os.mkdir), step(os.rename)
    folder = archive.archive_runs(sys.argv[1], sys.argv[3:])
    print("steps", count[0], "archive", folder)
""")


def _archiver(out: Path, ids: list[str], kill_at: int, delay: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "STEP_DELAY": str(delay)}
    return subprocess.Popen([sys.executable, "-c", KILLER, str(out), str(kill_at), *ids], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.subprocess
def test_sigkill_at_every_step_of_archiving_loses_nothing(tmp_path: Path) -> None:
    for at in range(1, 60):
        out = tmp_path / f"kill{at}"
        ids = _sweep(out)
        before = _files(out)
        proc = _archiver(out, ids[:TAKEN], at)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode in (0, -9), stderr
        _check_whole(out, before, ids)
        lb = tmp_path / f"lb{at}"
        assert main(["leaderboard", str(out / "records"), "--include-archived", "--no-probe", "-o", str(lb)]) == 0
        if proc.returncode == 0:  # the first run it was not killed in: it archived both runs, whole
            assert at > 5 and "archive" in stdout and len(list((out / ARCHIVE).glob("2*"))) == 1
            assert "+archived-" in (lb / "synthfer.md").read_text()
            return
    pytest.fail("archiving never finished")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS], ids=["full-disk", "denied", "read-only"])
def test_a_failure_at_any_step_is_one_line_and_archives_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 code: int) -> None:
    real = {"replace": os.replace, "mkdir": os.mkdir}
    for at in range(1, 60):
        out = tmp_path / f"fail{at}"
        ids = _sweep(out)
        before = _files(out)
        count = [0]

        def failing(name: str, count: list[int] = count, at: int = at):
            def call(*a: object, **k: object) -> object:
                count[0] += 1
                if count[0] == at:
                    raise OSError(code, os.strerror(code), str(a[0]))
                return real[name](*a, **k)  # noqa: B023 - called before the loop moves on
            return call

        monkeypatch.setattr(os, "replace", failing("replace"))
        monkeypatch.setattr(os, "mkdir", failing("mkdir"))
        try:
            folder = archive_runs(out, ids[:TAKEN])
        except FERBenchError as e:
            assert "nothing was archived, every record is where it was" in str(e) and os.strerror(code) in str(e)
            monkeypatch.undo()
            assert {k: v for k, v in _files(out).items() if not k.startswith(ARCHIVE)} == before
            assert not (out / ARCHIVE).exists() or not [p for p in (out / ARCHIVE).iterdir() if p.is_dir()]
            continue
        monkeypatch.undo()
        assert folder is not None  # the failure was not injected, or its caller handled it (mkdir of a folder there)
        _check_whole(out, before, ids)
        if count[0] < at:  # every step ran
            assert at > 5
            return
    pytest.fail("archiving never finished")


@pytest.mark.subprocess
def test_two_archivers_at_once_make_one_archive(tmp_path: Path) -> None:
    out = tmp_path / "race"
    ids = _sweep(out)
    before = _files(out)
    procs = [_archiver(out, ids[:TAKEN], 0, delay=0.05) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sorted("archive None" in o for o, _ in outputs) == [False, True]  # the second found them taken
    _check_whole(out, before, ids)
    assert len([p for p in (out / ARCHIVE).iterdir() if p.is_dir()]) == 1


def test_an_empty_archive_folder_left_by_an_old_version_is_passed_over(tmp_path: Path) -> None:
    out = tmp_path / "old"
    ids = _sweep(out)
    (out / ARCHIVE / "20260101T000000Z" / "records").mkdir(parents=True)
    (out / ARCHIVE / "20260101T000000Z" / "runs").mkdir()
    assert archive_runs(out, ids[:1]) is not None
    assert main(["leaderboard", str(out / "records"), "--include-archived", "--no-probe", "-o",
                 str(tmp_path / "lb")]) == 0
