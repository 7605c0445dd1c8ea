"""`ferbench status` while jobs end: a SLURM job that finishes between the reads of its state and of the records
is done, never "failed without a record"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_leaderboard import make_record

import bench.launch.status as status
from bench.launch.executor import jobs_log


def _sweep_with_one_slurm_job(out: Path, run_id: str) -> None:
    out.mkdir(parents=True)
    jobs_log(out).write_text(json.dumps({"run_id": run_id, "job_id": "41_0", "executor": "slurm"}) + "\n")
    (out / "status").mkdir()
    (out / "status" / f"{run_id}.json").write_text(json.dumps({"state": "running", "job_id": "41_0"}))


@pytest.mark.parametrize("sacct_says", ["COMPLETED", "FAILED"])
def test_a_job_that_ends_while_status_reads_is_not_failed_without_a_record(tmp_path: Path, monkeypatch,
                                                                            sacct_says: str) -> None:
    rec = make_record("fixmatch", 0, 0.7)
    out = tmp_path / "out"
    _sweep_with_one_slurm_job(out, rec["run_id"])
    asked: list[list[str]] = []

    def sacct_as_the_job_ends(job_ids: list[str]) -> dict[str, str]:
        # the job writes its record, then its "done" status, then ends: all while status is reading
        asked.append(job_ids)
        (out / "records").mkdir()
        (out / "records" / f"{rec['run_id']}.json").write_text(json.dumps(rec))
        (out / "status" / f"{rec['run_id']}.json").write_text(json.dumps({"state": "done", "job_id": "41_0"}))
        return {"41_0": sacct_says}

    monkeypatch.setattr(status, "slurm_states", sacct_as_the_job_ends)
    (row,) = status.sweep_status(out, probe=False)
    assert asked == [["41_0"]]
    assert (row.run_id, row.state, row.job_id) == (rec["run_id"], "done", "41_0"), row


def test_a_job_seen_over_with_no_record_after_it_is_failed(tmp_path: Path, monkeypatch) -> None:
    """The race fix must not hide real failures: a job over without a record is still failed, with its state."""
    out = tmp_path / "out"
    _sweep_with_one_slurm_job(out, "fixmatch_x")
    monkeypatch.setattr(status, "slurm_states", lambda job_ids: {"41_0": "TIMEOUT"})
    (row,) = status.sweep_status(out, probe=False)
    assert (row.state, row.error) == ("failed", "job 41_0 ended TIMEOUT without a record")
