"""Resuming is exact inside a log window, and a refused checkpoint leaves no trace.

A checkpoint keeps the log window (each step's logged values since the last log), so a run stopped between two
log steps and resumed logs the very curves of an uninterrupted one; a checkpoint written before windows were
saved still resumes, and its session says how many steps the next logged means lack. A checkpoint of another run
is refused before the run writes anything (TensorBoard's event files included)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from conftest import tiny_overrides

from bench.cli import main
from bench.config import build_config, run_id

# log every 4 of 12 iterations and stop after 6: the checkpoint at 6 falls inside the window of steps 5-8
WINDOW = {"method": "fixmatch", "train.log_every": 4}


def _record(out: Path) -> dict:
    (path,) = (out / "records").glob("*.json")
    return json.loads(path.read_text())


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def _stop_inside_the_window(cache: Path, out: Path) -> Path:
    """A run stopped at iteration 6 (its checkpoint, between the log steps 4 and 8): its checkpoint folder."""
    assert main(["run", "--quiet", *tiny_overrides(cache, out, **WINDOW, **{"train.stop_after": 6})]) == 0
    assert not (out / "records").exists()
    (checkpoint,) = (out / "runs").glob("*/checkpoint")
    return checkpoint


def test_a_resume_inside_a_log_window_logs_the_uninterrupted_curves(shared_cache: Path, tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["run", "--quiet", *tiny_overrides(shared_cache, straight, **WINDOW)]) == 0
    _stop_inside_the_window(shared_cache, resumed)
    assert main(["run", "--quiet", *tiny_overrides(shared_cache, resumed, **WINDOW)]) == 0
    a, b = _record(straight), _record(resumed)
    assert [c["step"] for c in a["curves"]] == [4, 8, 12]
    assert b["curves"] == a["curves"]  # the step-8 means include steps 5 and 6, trained before the stop
    assert b["sessions"] == [{"start_step": 0, "steps": 6}, {"start_step": 6, "steps": 6}]
    assert (a["run_id"], a["metrics"], a["history"]) == (b["run_id"], b["metrics"], b["history"])


def test_a_checkpoint_without_its_log_window_resumes_and_says_so(shared_cache: Path, tmp_path: Path) -> None:
    straight, old = tmp_path / "straight", tmp_path / "old"
    assert main(["run", "--quiet", *tiny_overrides(shared_cache, straight, **WINDOW)]) == 0
    checkpoint = _stop_inside_the_window(shared_cache, old)
    (custom,) = checkpoint.glob("custom_checkpoint_*.pkl")
    state = torch.load(custom, weights_only=False)
    assert len(state.pop("log_window")["loss"]) == 2  # steps 5 and 6
    torch.save(state, custom)  # as a checkpoint written before windows were saved
    assert main(["run", "--quiet", *tiny_overrides(shared_cache, old, **WINDOW)]) == 0
    a, b = _record(straight), _record(old)
    assert b["sessions"] == [{"start_step": 0, "steps": 6},
                             {"start_step": 6, "steps": 6, "log_window_lost_steps": 2}]
    assert b["curves"][0] == a["curves"][0] and b["curves"][2] == a["curves"][2]
    assert b["curves"][1]["step"] == 8 and b["curves"][1]["loss"] != a["curves"][1]["loss"]  # steps 7-8 only
    assert b["metrics"] == a["metrics"]  # training itself is unaffected


def test_a_checkpoint_of_another_run_is_refused_before_anything_is_written(shared_cache: Path, tmp_path: Path,
                                                                           capsys) -> None:
    sup = tiny_overrides(shared_cache, tmp_path / "a", method="supervised")
    assert main(["run", "--quiet", *sup, "train.stop_after=6"]) == 0
    fix = tiny_overrides(shared_cache, tmp_path / "b", method="fixmatch")
    sup_id, fix_id = run_id(build_config(overrides=sup)), run_id(build_config(overrides=fix))
    shutil.copytree(tmp_path / "a" / "runs" / sup_id / "checkpoint", tmp_path / "b" / "runs" / fix_id / "checkpoint")
    assert any((tmp_path / "a" / "runs" / sup_id).rglob("events.out.tfevents*"))  # what a run does write
    before = _files(tmp_path / "b")
    capsys.readouterr()
    assert main(["run", "--quiet", *fix]) == 2
    assert _files(tmp_path / "b") == before  # no tb/ folder, no event file, no record
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and f"a checkpoint of run {sup_id} (stage main" in err[0], err


def test_a_foreign_checkpoint_of_a_later_stage_is_refused_before_any_stage_trains(shared_cache: Path,
                                                                                  tmp_path: Path, capsys) -> None:
    """A multi-stage run checks every stage's checkpoint first, not only when that stage comes to resume."""
    # without stage 0 (MAE needs a ViT): finetune, then semisup, whose checkpoint is another run's
    args = tiny_overrides(shared_cache, tmp_path, method="frpretrain", **{"method_args.pretrain": "none"})
    rid = run_id(build_config(overrides=args))
    checkpoint = tmp_path / "runs" / rid / "stages" / "semisup" / "checkpoint"
    checkpoint.mkdir(parents=True)
    other = {"step": 4, "run_id": "fixmatch_other", "config_sha256": "0" * 64, "stage": "semisup"}
    (checkpoint / "complete.json").write_text(json.dumps(other))
    before = _files(tmp_path)
    assert main(["run", "--quiet", *args]) == 2
    assert _files(tmp_path) == before  # the finetune stage did not train: nothing of it, no event file
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "a checkpoint of run fixmatch_other (stage semisup" in err[0], err
    assert f"not of this run {rid} (stage semisup" in err[0]
