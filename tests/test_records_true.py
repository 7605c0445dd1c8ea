"""A record never claims what did not happen (issue 20): checkpoints bound to their run, the record written after
every file it names (each whole), names that are names, records of a newer schema counted; and the recipes'
EMA and unlabeled pool as the official codes have them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides
from torch import nn

from bench.cli import main
from bench.config import AugmentConfig, build_config, run_id
from bench.data.views import ViewMaker
from bench.engine.ema import WalkingEma


def _one_error(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("ferbench: error: "), stderr
    return lines[0]


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ---- checkpoints know their run --------------------------------------------------------------------------------


def test_a_checkpoint_of_another_run_is_refused_naming_both(shared_cache: Path, tmp_path: Path, capsys) -> None:
    """A supervised run's checkpoint copied into a FixMatch run's folder (the same tensor shapes) is not resumed."""
    sup = tiny_overrides(shared_cache, tmp_path / "a", method="supervised")
    assert main(["run", "--quiet", *sup, "train.stop_after=6"]) == 0
    fix = tiny_overrides(shared_cache, tmp_path / "b", method="fixmatch")
    sup_id, fix_id = run_id(build_config(overrides=sup)), run_id(build_config(overrides=fix))
    shutil.copytree(tmp_path / "a" / "runs" / sup_id / "checkpoint", tmp_path / "b" / "runs" / fix_id / "checkpoint")
    capsys.readouterr()
    assert main(["run", "--quiet", *fix]) == 2
    line = _one_error(capsys.readouterr().err)
    assert f"a checkpoint of run {sup_id} (stage main" in line and f"not of this run {fix_id} (stage main" in line
    assert "delete" in line and not (tmp_path / "b" / "records").exists()
    marker = json.loads((tmp_path / "a" / "runs" / sup_id / "checkpoint" / "complete.json").read_text())
    assert marker == {"step": 6, "run_id": sup_id, "stage": "main",
                      "config_sha256": marker["config_sha256"]} and len(marker["config_sha256"]) == 64


# ---- every file before the record, each whole -------------------------------------------------------------------


def _run_with_file_size_limit(args: list[str], limit: int, cwd: Path) -> subprocess.CompletedProcess:
    """`ferbench run` in a process whose files may not grow past `limit` bytes (Python ignores SIGXFSZ, so a write
    past it fails with EFBIG)."""
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "bench.cli", "run", "--quiet", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, preexec_fn=cap)


def test_a_failed_write_of_the_final_weights_leaves_no_record_and_a_rerun_completes(shared_cache: Path,
                                                                                      tmp_path: Path) -> None:
    args = tiny_overrides(shared_cache, tmp_path / "out", method="fixmatch", **{"train.checkpoint_every": 100})
    # the cache exists already (shared); the weights (~290 kB with the EMA) are the run's largest file
    res = _run_with_file_size_limit(args, 120_000, tmp_path)
    assert res.returncode == 2
    line = _one_error(res.stderr)
    assert "could not write the results of run" in line and "File too large" in line
    files = _files(tmp_path / "out")
    assert not any(f.startswith("records/") and f.endswith(".json") for f in files), files
    assert not any("final_model" in f or f.endswith(".tmp") for f in files), files
    assert main(["run", "--quiet", *args]) == 0  # nothing was trusted: the rerun trains and writes everything
    rec = json.loads(next((tmp_path / "out" / "records").glob("*.json")).read_text())
    model = tmp_path / "out" / "records" / rec["artifacts"]["final_model"]["file"]
    assert model.resolve() == (tmp_path / "out" / "runs" / rec["run_id"] / "final_model.pt").resolve()
    assert rec["artifacts"]["final_model"]["bytes"] == model.stat().st_size > 120_000


def test_a_failed_checkpoint_write_is_one_line_and_leaves_nothing_a_rerun_would_trust(shared_cache: Path,
                                                                                     tmp_path: Path) -> None:
    args = tiny_overrides(shared_cache, tmp_path / "out", method="fixmatch")  # a checkpoint every 4 iterations
    res = _run_with_file_size_limit(args, 120_000, tmp_path)
    assert res.returncode == 2
    assert "could not write the checkpoint" in _one_error(res.stderr)
    run_dir = next((tmp_path / "out" / "runs").iterdir())
    assert not (run_dir / "checkpoint").exists() and not (run_dir / "checkpoint.tmp" / "complete.json").exists()
    assert not (tmp_path / "out" / "records").exists()
    assert main(["run", "--quiet", *args]) == 0  # starts over (no complete checkpoint) and finishes
    rec = json.loads(next((tmp_path / "out" / "records").glob("*.json")).read_text())
    assert rec["sessions"] == [{"start_step": 0, "steps": 12}]


def test_a_rerun_that_finds_a_record_with_damaged_files_says_so(shared_cache: Path, tmp_path: Path, capsys) -> None:
    args = tiny_overrides(shared_cache, tmp_path, method="supervised")
    assert main(["run", "--quiet", *args]) == 0
    rec = json.loads(next((tmp_path / "records").glob("*.json")).read_text())
    model = tmp_path / "runs" / rec["run_id"] / "final_model.pt"
    model.write_bytes(model.read_bytes()[:1000])  # truncated, as a full disk left it before records came last
    capsys.readouterr()
    assert main(["run", "--quiet", *args]) == 2
    line = _one_error(capsys.readouterr().err)
    assert f"run {rec['run_id']} is recorded as done" in line and "final weights" in line
    assert "not the ones it wrote" in line and "delete the record to run it again" in line
    model.unlink()
    assert main(["run", "--quiet", *args]) == 2
    assert "are missing" in _one_error(capsys.readouterr().err)
    (tmp_path / "records" / rec["predictions"]["file"]).unlink()
    assert main(["run", "--quiet", *args]) == 2
    assert f"its predictions file {rec['predictions']['file']} is missing" in _one_error(capsys.readouterr().err)


def test_a_recipe_is_a_plain_name(tmp_path: Path, capsys) -> None:
    assert main(["run", "--quiet", "recipe=../recipes/usb", f"output_dir={tmp_path / 'out'}"]) == 2
    assert "recipe='../recipes/usb': unknown; expected 'harness' or one of adacm" in _one_error(capsys.readouterr().err)
    assert main(["run", "--quiet", "preset=../presets/usb", f"output_dir={tmp_path / 'out'}"]) == 2
    assert "unknown preset '../presets/usb'" in _one_error(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_records_of_a_newer_schema_are_counted_not_silently_dropped(tmp_path: Path, capsys) -> None:
    from test_leaderboard import make_record
    from test_reported import write_records

    records = write_records([make_record("supervised", seed, 0.6) for seed in (0, 1)], tmp_path / "records")
    future = {**make_record("fixmatch", 0, 0.7), "schema": "ferbench.record/2"}
    (records / "future.json").write_text(json.dumps(future))
    (records / "notes.json").write_text(json.dumps({"comment": "not a record"}))
    assert main(["leaderboard", str(records), "-o", str(tmp_path / "lb")]) == 0
    err = capsys.readouterr().err  # a warning, where a script reading the output looks for one
    assert "skipped 1 record(s) of a newer schema than this FERBench reads (ferbench.record/1)" in err
    assert "passed over 1 JSON file(s) that are not run records" in err
    assert "fixmatch" not in (tmp_path / "lb" / "synthfer.md").read_text()


# ---- the recipes' EMA and unlabeled pool, as the official codes ---------------------------------------------------


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.register_buffer("stat", torch.zeros(()))


def _ema_after(values: list[float], **kw: object) -> tuple[float, float]:
    net = _Net()  # w0 = 0
    ema = WalkingEma(net, decay=0.5, **kw)
    for step, v in enumerate(values):
        with torch.no_grad():
            net.w.fill_(v)
            net.stat.fill_(10 * v)
        ema.update(net, step=step)
    return float(ema.module.w.detach()), float(ema.module.stat)


def test_ema_warmup_and_buffers_follow_the_setting() -> None:
    # "copy" (timm's rule, the harness): the EMA is the student after two updates
    assert _ema_after([1.0, 2.0]) == (2.0, 20.0)
    # "none" (the official codes): d^2 w0 + d(1-d) w1 + (1-d) w2 = 0 + 0.25 + 1.0, buffers averaged alike
    assert _ema_after([1.0, 2.0], warmup="none") == (1.25, 12.5)
    # USB's EMA shadows parameters only: its model's BatchNorm statistics are the student's
    assert _ema_after([1.0, 2.0], warmup="none", buffers="copy") == (1.25, 20.0)
    assert _ema_after([1.0, 2.0, 4.0], warmup="none", buffers="copy", walk="state_dict") == (2.625, 40.0)


@pytest.mark.parametrize("recipe, disjoint", [("adacm", True), ("leaf", True), ("sitfer", True), ("usb", False)])
def test_the_lineage_recipes_draw_unlabeled_images_from_the_complement(shared_cache: Path, recipe: str,
                                                                       disjoint: bool) -> None:
    import numpy as np
    from accelerate import Accelerator

    from bench.engine.run_data import prepare_run_data
    from bench.registry import get_method_class

    cfg = build_config(overrides=[f"recipe={recipe}", "method=supervised", *tiny_overrides(shared_cache, Path("x"))])
    run = prepare_run_data(cfg, Accelerator(cpu=True), get_method_class("supervised"))
    shared = np.intersect1d(run.labeled_pool, run.unlabeled_pool)
    assert len(shared) == (0 if disjoint else len(run.labeled_pool))
    assert len(run.unlabeled_pool) == 280 - (len(run.labeled_pool) if disjoint else 0)


def test_usb_pads_its_crop_by_the_floor() -> None:
    """USB's RandomCrop(size, padding=int(size * (1 - 0.875))): 5, 7 and 9 px at 44, 60 and 76, where rounding to
    the nearest gives 6, 8 and 10; the lineage's 8 px at 224 (8/224 of the side) needs the nearest."""
    floor, nearest = ViewMaker(AugmentConfig(pad_rounding="floor")), ViewMaker(AugmentConfig())
    assert [floor.pad_width(s) for s in (44, 60, 76, 32)] == [5, 7, 9, 4]
    assert [nearest.pad_width(s) for s in (44, 60, 76, 32)] == [6, 8, 10, 4]
    assert ViewMaker(AugmentConfig(pad_frac=8 / 224)).pad_width(224) == 8
    assert build_config(overrides=["recipe=usb"]).augment.pad_rounding == "floor"
