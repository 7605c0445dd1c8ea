"""`ferbench bench train`: end to end vs ceiling on tiny settings; the JSON's structure and its ratios."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main


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
    assert "expected --steps >= 1" in capsys.readouterr().err
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
