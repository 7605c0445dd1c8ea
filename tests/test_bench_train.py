"""`ferbench bench train`: end to end vs ceiling on tiny settings; the JSON's structure and its ratios."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.startup import default_threads


def test_bench_train_writes_rates_and_their_ratio(shared_cache: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", "train", "fixmatch", "--steps", "2", "--warmup", "1", "--image-size", "32", "--batch-size", "4",
            "--mu", "2", "--backbone", "ferbench_cnn_tiny", "--n-train", "280", "--workers", "1",
            "--cache-dir", str(shared_cache), "--json", str(out)]
    assert main(args) == 0
    assert "end to end" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert (res["method"], res["image_size"], res["batch_size"], res["mu"]) == ("fixmatch", 32, 4, 2)
    assert res["images_per_step"] == 4 + 2 * 4 * 2  # labeled weak + unlabeled weak and strong
    assert res["device"] == "cpu" and res["mixed_precision"] == "no" and res["steps"] == 2
    rows = res["rows"]
    assert [(r["augment_on"], r["compile"]) for r in rows] == [("device", "none"), ("cpu", "none")]
    assert rows[1]["workers"] == 1 and rows[1]["images_on"] == "host" and rows[0]["images_on"] == "device"
    for r in rows:
        assert r["end_to_end_images_per_s"] > 0 and r["ceiling_images_per_s"] > 0
        assert r["ratio"] == pytest.approx(r["end_to_end_images_per_s"] / r["ceiling_images_per_s"], rel=1e-12)
        assert r["fused_optimizer"] is False
    assert rows[1]["ceiling_images_per_s"] == rows[0]["ceiling_images_per_s"]  # one ceiling for both paths
    assert (res["end_to_end_images_per_s"], res["ceiling_images_per_s"], res["ratio"]) == (
        rows[0]["end_to_end_images_per_s"], rows[0]["ceiling_images_per_s"], rows[0]["ratio"])


def test_bench_train_refuses_bad_settings(tmp_path: Path, capsys) -> None:
    assert main(["bench", "train", "fixmatch", "--steps", "0", "--cache-dir", str(tmp_path)]) == 2
    assert "bench train --steps 0: expected an integer in [1, inf)" in capsys.readouterr().err
    assert main(["bench", "train", "fixmatch", "--compile", "fast", "--cache-dir", str(tmp_path)]) == 2
    assert "train.compile='fast'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing generated


def test_bench_train_measures_the_stage_a_multi_stage_run_executes(shared_cache: Path, tmp_path: Path) -> None:
    """FR-pretraining's stages, built as the trainer builds them (stage defaults, stage_model hand-off): the
    semi-supervised stage by default, with its own mu = 1, and the Face-Mixup stage on request."""
    common = ["--steps", "1", "--warmup", "1", "--image-size", "48", "--batch-size", "4", "--mu", "3",
              "--backbone", "ferbench_vit_tiny", "--n-train", "280", "--workers", "1", "--no-cpu-path",
              "--cache-dir", str(shared_cache)]
    assert main(["bench", "train", "frpretrain", *common, "--json", str(tmp_path / "semi.json")]) == 0
    semi = json.loads((tmp_path / "semi.json").read_text())
    assert (semi["stage"], semi["mu"]) == ("semisup", 1)  # the stage's mu, not the flag's 3
    assert semi["images_per_step"] == 4 + 2 * 4  # labeled weak + unlabeled weak and strong
    assert main(["bench", "train", "frpretrain", *common, "--stage", "finetune",
                 "--json", str(tmp_path / "fine.json")]) == 0
    fine = json.loads((tmp_path / "fine.json").read_text())
    assert (fine["stage"], fine["images_per_step"]) == ("finetune", 4)  # labeled images only
    assert main(["bench", "train", "frpretrain", *common[:-2], "--cache-dir", str(tmp_path / "c"), "--stage",
                 "warmup"]) == 2
    assert not (tmp_path / "c").exists()  # refused before any data is generated


def test_busy_processes_take_a_core_until_stopped() -> None:
    from bench.benchmarks.train_speed import _process_cpu_s, busy_processes

    last = max(os.sched_getaffinity(0))
    with busy_processes(1, pinned=True) as (pid,):
        assert os.sched_getaffinity(pid) == {last}
        before = _process_cpu_s(pid)
        time.sleep(1.0)
        assert _process_cpu_s(pid) - before > 0.3  # CPU-bound: most of a core, even beside the rest of the suite
    assert not Path(f"/proc/{pid}").exists()  # stopped and reaped


@pytest.mark.subprocess
def test_bench_train_contention_measures_each_setting_in_its_own_process(shared_cache: Path, tmp_path: Path,
                                                                         capsys) -> None:
    out = tmp_path / "contention.json"
    args = ["bench", "train", "fixmatch", "--contention", "--policies", "spin,passive,spincount=1000",
            "--threads", "2,1", "--steps", "2", "--warmup", "1", "--image-size", "32", "--batch-size", "4", "--mu", "1",
            "--backbone", "ferbench_cnn_tiny", "--n-train", "280", "--cache-dir", str(shared_cache), "--json", str(out)]
    assert main(args) == 0
    assert "contended (img/s)" in capsys.readouterr().out
    res = json.loads(out.read_text())
    rows = res["rows"]
    # one thread never waits for another: measured once, under the first policy
    assert [(r["threads"], r["policy"]) for r in rows] == [(2, "spin"), (2, "passive"), (2, "spincount=1000"),
                                                           (1, "spin")]
    # each process started with exactly its setting (nothing inherited from this one's FERBench settings)
    assert [(r["torch_threads"], r["env"]) for r in rows] == [
        (2, {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}),
        (2, {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None}),
        (2, {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "1000"}),
        (1, {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None})]
    for r in rows:
        idle, cont = r["measurements"]["idle"], r["measurements"]["contended"]
        assert len(idle) == len(cont) == 1 and r["idle_images_per_s"] > 0 and r["contended_images_per_s"] > 0
        assert r["ratio"] == pytest.approx(cont[0]["images_per_s"] / idle[0]["images_per_s"], rel=1e-12)
        assert idle[0]["busy_cores"] is None and cont[0]["busy_cores"] >= 0
    if default_threads() == 2:  # against libgomp's default with one thread per core (2 here)
        assert rows[0]["idle_vs_spin"] == 1.0
        assert rows[1]["idle_vs_spin"] == pytest.approx(rows[1]["idle_images_per_s"] / rows[0]["idle_images_per_s"])


@pytest.mark.parametrize("args, message", [
    (["--contention", "--policies", "spin,lazy"], "'lazy': expected spin, passive, active or spincount=N"),
    (["--contention", "--threads", "2,x"], "--threads '2,x': expected whole numbers"),
    (["--contention", "--threads", "0"], "--threads '0': expected whole numbers separated by commas, each an "
                                         "integer in [1, inf)"),
    (["--busy", "2"], "--busy only with --contention"),
])
def test_bench_train_contention_refuses_bad_settings(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    assert main(["bench", "train", "fixmatch", *args, "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ferbench: error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing generated
