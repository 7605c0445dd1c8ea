"""End-to-end runs on a tiny synthfer: the record, skip-if-done, and exact resume after an interruption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_overrides

import bench.engine.checkpoints as checkpoints
from bench.cli import main
from bench.config import build_config, run_id


def _record(out: Path) -> dict:
    files = sorted((out / "records").glob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def test_tiny_fixmatch_run_writes_a_complete_record(shared_cache: Path, tmp_path: Path, capsys) -> None:
    args = tiny_overrides(shared_cache, tmp_path, method="fixmatch")
    assert main(["run", "--quiet", *args]) == 0
    rec = _record(tmp_path)
    assert rec["run_id"] == run_id(build_config(overrides=args))
    assert (rec["method"], rec["dataset"], rec["protocol"], rec["budget"]) == ("fixmatch", "synthfer", "fraction", 0.1)
    assert rec["iterations"] == 12 and rec["world_size"] == 1
    assert rec["global_batch"] == {"labeled": 8, "unlabeled": 16}
    assert [h["step"] for h in rec["history"]] == [4, 8, 12]  # eval_every=4
    assert [c["step"] for c in rec["curves"]] == [2, 4, 6, 8, 10, 12]  # log_every=2
    assert all("mask_rate" in c and "loss_u" in c for c in rec["curves"])
    final = rec["metrics"]["final"]
    assert final["accuracy"] == rec["history"][-1]["accuracy"]
    assert sum(map(sum, final["confusion_matrix"])) == rec["metrics"]["n_test"] == 140
    assert sum(rec["split"]["per_class_labeled"]) == rec["split"]["n_labeled"]
    assert len(rec["split"]["manifest_sha256"]) == 64
    assert rec["class_names"] == ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger"]
    assert rec["images_per_s"] > 0 and rec["wall_time_s"] > 0
    assert rec["versions"]["torch"]
    run_dir = tmp_path / "runs" / rec["run_id"]
    assert (run_dir / "curves.png").stat().st_size > 1000
    assert not (run_dir / "checkpoint").exists()  # the result is the record + final weights
    # Running it again finds the record and leaves it untouched.
    before = (tmp_path / "records" / f"{rec['run_id']}.json").read_bytes()
    capsys.readouterr()
    assert main(["run", "--quiet", *args]) == 0
    assert "already done" in capsys.readouterr().out
    assert (tmp_path / "records" / f"{rec['run_id']}.json").read_bytes() == before


class _Died(Exception):
    """A process killed at a chosen point of a checkpoint write."""


@pytest.mark.parametrize("death, resumes_at", [
    ("in save_state", 4),  # the step-8 checkpoint is half written: back to the complete one of step 4
    ("between the renames", 8),  # step 8 is complete under .tmp, step 4 under .old, no current one: step 8
])
def test_a_death_while_checkpointing_resumes_from_a_complete_checkpoint(
        shared_cache: Path, tmp_path: Path, monkeypatch, death: str, resumes_at: int) -> None:
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    assert main(["run", "--quiet", *tiny_overrides(shared_cache, straight, method="flexmatch")]) == 0
    real_replace, real_marker = checkpoints.os.replace, checkpoints.write_json_atomic

    def replace(src, dst):  # the step-8 save dies after moving the current checkpoint aside
        if Path(src).name == "checkpoint.tmp" and json.loads((Path(src) / "complete.json").read_text())["step"] == 8:
            raise _Died
        return real_replace(src, dst)

    def marker(path, payload, **kw):  # the step-8 save dies before its files are complete
        if payload["step"] == 8:
            raise _Died
        return real_marker(path, payload, **kw)

    if death == "in save_state":
        monkeypatch.setattr(checkpoints, "write_json_atomic", marker)
    else:
        monkeypatch.setattr(checkpoints.os, "replace", replace)
    with pytest.raises(_Died):
        main(["run", "--quiet", *tiny_overrides(shared_cache, crashed, method="flexmatch")])
    monkeypatch.undo()
    run_dir = next((crashed / "runs").iterdir())
    left = sorted(p.name for p in run_dir.iterdir() if p.name.startswith("checkpoint"))
    expected = ["checkpoint", "checkpoint.tmp"] if death == "in save_state" else ["checkpoint.old", "checkpoint.tmp"]
    assert left == expected
    assert main(["run", "--quiet", *tiny_overrides(shared_cache, crashed, method="flexmatch")]) == 0
    a, b = _record(straight), _record(crashed)
    assert b["sessions"][-1] == {"start_step": resumes_at, "steps": 12 - resumes_at}
    assert a["metrics"] == b["metrics"] and a["history"] == b["history"]
    assert not any(p.name.startswith("checkpoint") for p in run_dir.iterdir())


def test_an_unreadable_checkpoint_is_one_line_not_a_restart(shared_cache: Path, tmp_path: Path, capsys) -> None:
    args = tiny_overrides(shared_cache, tmp_path, method="fixmatch")
    assert main(["run", "--quiet", *args, "train.stop_after=6"]) == 0
    checkpoint = next((tmp_path / "runs").iterdir()) / "checkpoint"
    for f in checkpoint.iterdir():
        if f.name != "complete.json":
            f.write_bytes(b"garbage")
    assert main(["run", "--quiet", *args]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and f"{checkpoint}: no readable checkpoint to resume from (checkpoint: " in err[0]
    assert not (tmp_path / "records").exists()


def test_a_checkpoint_written_before_the_stage_redesign_resumes_exactly(shared_cache: Path, tmp_path: Path) -> None:
    """tests/data/softmatch_checkpoint_before_issue19.tgz is the checkpoint at iteration 6 of a tiny SoftMatch run
    (dist_init=first_batch, `tiny_overrides`, train.stop_after=6) written by commit d34c891, before the method
    state was declared (issue 19). Resumed by this code, the run ends exactly as an uninterrupted one does."""
    import tarfile

    args = [*tiny_overrides(shared_cache, tmp_path / "old", method="softmatch"), "method_args.dist_init=first_batch"]
    cfg = build_config(overrides=args)
    run_dir = tmp_path / "old" / "runs" / run_id(cfg)
    run_dir.mkdir(parents=True)
    with tarfile.open(Path(__file__).parent / "data" / "softmatch_checkpoint_before_issue19.tgz") as tar:
        tar.extractall(run_dir, filter="data")
    assert main(["run", "--quiet", *args]) == 0
    resumed = json.loads(next((tmp_path / "old" / "records").glob("*.json")).read_text())
    # the checkpoint predates markers that name their run: resumed, and the record says it could not be verified
    assert resumed["sessions"] == [{"start_step": 0, "steps": 6},
                                   {"start_step": 6, "steps": 6, "unverified_checkpoint": True}]
    fresh_args = [*tiny_overrides(shared_cache, tmp_path / "new", method="softmatch"),
                  "method_args.dist_init=first_batch"]
    assert main(["run", "--quiet", *fresh_args]) == 0
    fresh = json.loads(next((tmp_path / "new" / "records").glob("*.json")).read_text())
    assert resumed["curves"] == fresh["curves"] and resumed["history"] == fresh["history"]
    assert resumed["metrics"] == fresh["metrics"]
