"""`ferbench data verify|stats|prepare` and runs on the real-format datasets, through the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import tiny_overrides

from bench.cli import main
from bench.data.replicas import (
    FerRow,
    corrupt_file,
    ferplus_votes,
    write_affectnet_csv_replica,
    write_ferplus_replica,
    write_rafdb_replica,
)


def test_verify_lists_every_problem_and_writes_nothing(tmp_path: Path, capsys) -> None:
    rows = write_affectnet_csv_replica(tmp_path / "an", [0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 2])
    images = tmp_path / "an" / "Manually_Annotated_Images"
    os.remove(images / rows["train"][0])
    corrupt_file(images / rows["train"][1])
    training = tmp_path / "an" / "Manually_Annotated_file_lists" / "training.csv"
    training.write_text(training.read_text() + "1/x.jpg,1,2,3\n")
    cache = tmp_path / "cache"
    assert main(["data", "verify", "affectnet8", "--root", str(tmp_path / "an"), "--cache-dir", str(cache)]) == 1
    out, err = capsys.readouterr()
    assert err.strip().splitlines()[-1] == ("ferbench: verify affectnet8: 3 problem(s): 1 malformed, 1 missing, "
                                            "1 unreadable")  # the lines before it are the progress bar
    assert f"{training}:11: expected 9 comma-separated fields" in out
    assert f"{images / rows['train'][0]}: image file not found" in out
    assert f"{images / rows['train'][1]}: cannot decode" in out
    assert "dropped from train: 1 (code 8 None)" in out
    assert not cache.exists()


def test_verify_clean_dataset(tmp_path: Path, capsys) -> None:
    write_rafdb_replica(tmp_path, [1, 2, 3, 4, 5, 6, 7], [1, 2], size=32, originals=False)
    assert main(["data", "verify", "rafdb", "--root", str(tmp_path)]) == 0
    assert "verify rafdb: OK" in capsys.readouterr().out


def test_stats_prints_counts_and_writes_a_chart(tmp_path: Path, capsys) -> None:
    write_rafdb_replica(tmp_path, [1, 2, 2, 3, 4, 4, 4, 4, 5, 6, 7, 7], [1, 2], size=32, originals=False)
    png = tmp_path / "stats.png"
    assert main(["data", "stats", "rafdb", "--root", str(tmp_path), "--out", str(png), "--budget-protocol", "total",
                 "--budget", "8"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in out.splitlines() if line.startswith("│")}
    # class: RAF-DB code, train, test, labeled N=8. Canonical sizes 2 4 1 1 2 1 1, caps 1 3 1 1 1 1 1, Sad
    # rarest (weight 2/3): level 8/6.67 = 1.2 caps all but Happy and Sad; (8-5)/1.67 = 1.8 caps Sad; Happy 2.
    assert rows["1 Happy"] == ["4", "4", "0", "2"]
    assert rows["4 Fear"] == ["2", "2", "1", "1"]
    assert rows["total"] == ["", "12", "2", "8"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prepare_reuses_the_cache_until_the_source_changes(tmp_path: Path, capsys) -> None:
    basic = write_rafdb_replica(tmp_path / "raf", [1, 2, 3, 4, 5, 6, 7], [1, 2], size=32, originals=False)
    args = ["data", "prepare", "rafdb", "--root", str(tmp_path / "raf"), "--cache-dir", str(tmp_path / "c"),
            "--image-size", "16", "--workers", "1"]
    assert main(args) == 0
    first = sorted((tmp_path / "c" / "prepared").iterdir())
    stamp = (first[0] / "train.arrow").stat().st_mtime_ns
    assert main(args) == 0
    assert sorted((tmp_path / "c" / "prepared").iterdir()) == first
    assert (first[0] / "train.arrow").stat().st_mtime_ns == stamp
    label_file = basic / "EmoLabel" / "list_patition_label.txt"
    label_file.write_text(label_file.read_text().replace("train_00001.jpg 1", "train_00001.jpg 2"))
    assert main(args) == 0
    assert len(list((tmp_path / "c" / "prepared").iterdir())) == 2
    assert "prepared rafdb: 7 train + 2 test images at 16px" in capsys.readouterr().out


def _ferplus_rows() -> list[FerRow]:
    columns = ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt"]
    rows = []
    for usage, n in (("Training", 4), ("PrivateTest", 2)):
        for c in columns:
            rows += [FerRow(usage, f"{usage[0]}{c}{i}.png", ferplus_votes(**{c: 8, "neutral" if c != "neutral"
                                                                              else "anger": 2})) for i in range(n)]
    return rows


def test_run_on_ferplus_argmax7_with_a_per_class_budget(shared_cache: Path, tmp_path: Path, capsys) -> None:
    write_ferplus_replica(tmp_path / "fp", _ferplus_rows())
    args = tiny_overrides(shared_cache, tmp_path / "out", method="supervised", **{
        "data.name": "ferplus", "data.root": str(tmp_path / "fp"), "data.label_protocol": "argmax7",
        "data.protocol": "per_class", "data.budget": 2, "train.iterations": 4})
    assert main(["run", "--quiet", *args]) == 0
    rec = json.loads(next((tmp_path / "out" / "records").glob("*.json")).read_text())
    assert rec["dataset"] == "ferplus-argmax7" and rec["run_id"].startswith("supervised_ferplus-argmax7_per_class2_")
    assert rec["class_names"] == ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger"]
    assert rec["split"]["per_class_labeled"] == [2] * 7 and rec["metrics"]["n_test"] == 14
    assert rec["native_codes"] == {"0": 0, "1": 1, "2": 3, "3": 2, "4": 6, "5": 5, "6": 4}
    args.append("data.budget=5")  # 4 training images of each class
    assert main(["run", "--quiet", *args]) == 2
    assert "budget 5 too large for protocol 'per_class': class Neutral has only 4" in capsys.readouterr().err


@pytest.mark.parametrize(("option", "message"), [
    ("data.options={imgs: original}", "dataset 'rafdb': unknown option(s) imgs; accepted: images"),
    ("data.options={images: cropped}", "RAF-DB images='cropped': expected one of aligned, original"),
])
def test_bad_reader_options(shared_cache: Path, tmp_path: Path, capsys, option: str, message: str) -> None:
    write_rafdb_replica(tmp_path / "raf", [1, 2, 3, 4, 5, 6, 7], [1], size=32, originals=False)
    args = tiny_overrides(shared_cache, tmp_path / "out", method="supervised", **{
        "data.name": "rafdb", "data.root": str(tmp_path / "raf")}) + [option]
    assert main(["run", "--quiet", *args]) == 2
    assert message in capsys.readouterr().err


def test_prepared_images_are_memory_mapped_and_a_run_reads_them_without_a_copy(tmp_path: Path) -> None:
    """Pixels are one raw (N, H, W, 3) file per split, memory-mapped: what prepare decoded, byte for byte, and
    the training split a run builds is a view of that mapping (no copy of the cache in memory)."""
    import numpy as np
    import torch
    from accelerate import Accelerator

    from bench.config import build_config
    from bench.data.cache import decode_image, images_file, load_prepared, prepare_dataset
    from bench.engine.image_store import ImageStore, take
    from bench.engine.run_data import prepare_run_data
    from bench.registry import get_method_class

    basic = write_rafdb_replica(tmp_path / "raf", [1, 2, 3, 4, 5, 6, 7] * 2, [1, 2, 3], size=32, originals=False)
    path = prepare_dataset("rafdb", str(basic), 16, str(tmp_path / "c"), workers=1)
    data = load_prepared(path)
    train = data.train.images
    assert isinstance(train, np.memmap) and train.shape == (14, 16, 16, 3) and train.dtype == np.uint8
    assert images_file(path, "train").stat().st_size == 14 * 16 * 16 * 3
    first = basic / "Image" / "aligned" / f"{data.train.ids[0].removesuffix('.jpg')}_aligned.jpg"
    assert np.array_equal(train[0], decode_image(str(first), 16, None))
    cfg = build_config(overrides=["data.name=rafdb", f"data.root={basic}", f"data.cache_dir={tmp_path / 'c'}",
                                  "data.image_size=16", "data.budget=1.0", "method=supervised"])
    run = prepare_run_data(cfg, Accelerator(cpu=True), get_method_class("supervised"))
    base = run.data.train.images
    assert run.images.data_ptr() == base.ctypes.data  # a view of the mapping
    assert ImageStore(run.images, torch.device("cpu")).images.data_ptr() == base.ctypes.data  # still no copy
    batch = take(run.images, np.array([3, 0]))
    assert batch.is_contiguous() and torch.equal(batch, torch.from_numpy(np.array(base[[3, 0]])).permute(0, 3, 1, 2))
