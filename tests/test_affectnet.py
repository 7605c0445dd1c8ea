"""AffectNet readers on replicas of both distributed layouts (docs/guides/datasets.md#affectnet)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bench.data.affectnet import read_affectnet, read_exp_npy
from bench.data.cache import load_prepared, prepare_dataset
from bench.data.inspect import check_images, survey
from bench.data.labels import AFFECTNET_TO_CANONICAL, CANONICAL_CLASSES
from bench.data.records import ReadReport
from bench.data.replicas import corrupt_file, write_affectnet_csv_replica, write_affectnet_npy_replica
from bench.errors import FERBenchError

# codes 0..10; 8 None, 9 Uncertain, 10 No-Face are never expressions
TRAIN_CODES = [0, 0, 1, 1, 1, 2, 3, 4, 5, 6, 6, 7, 7, 8, 9, 10, 10]
VAL_CODES = [0, 1, 2, 3, 4, 5, 6, 7, 7, 8]


def _by_class(records, split: str) -> dict[str, int]:
    return dict(Counter(CANONICAL_CLASSES[r.label] for r in records if r.split == split))


@pytest.mark.parametrize("val_header", [False, True])
def test_csv_layout_counts_7_and_8_classes(tmp_path: Path, val_header: bool) -> None:
    write_affectnet_csv_replica(tmp_path, TRAIN_CODES, VAL_CODES, val_header=val_header)
    report = ReadReport()
    eight = read_affectnet(tmp_path, 8, report=report)
    assert _by_class(eight, "train") == {"Neutral": 2, "Happy": 3, "Sad": 1, "Surprise": 1, "Fear": 1,
                                         "Disgust": 1, "Anger": 2, "Contempt": 2}
    assert _by_class(eight, "test") == {"Neutral": 1, "Happy": 1, "Sad": 1, "Surprise": 1, "Fear": 1,
                                        "Disgust": 1, "Anger": 1, "Contempt": 2}
    assert report.dropped == {("train", "code 8 None"): 1, ("train", "code 9 Uncertain"): 1,
                              ("train", "code 10 No-Face"): 2, ("test", "code 8 None"): 1}
    report7 = ReadReport()
    seven = read_affectnet(tmp_path, 7, report=report7)
    assert len([r for r in seven if r.split == "train"]) == 11 and len([r for r in seven if r.split == "test"]) == 7
    assert report7.dropped[("train", "code 7 Contempt (7-class protocol)")] == 2
    assert report7.dropped[("test", "code 7 Contempt (7-class protocol)")] == 2
    assert all(r.label < 7 for r in seven)


def test_label_map_by_name() -> None:
    native = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]
    assert [CANONICAL_CLASSES[AFFECTNET_TO_CANONICAL[code]] for code in range(8)] == native


def test_csv_rows_carry_the_face_box_and_prepare_crops_to_it(tmp_path: Path) -> None:
    rows = write_affectnet_csv_replica(tmp_path, [0, 1, 2, 3, 4, 5, 6, 7], [5, 6])
    records = read_affectnet(tmp_path, 8)
    first = records[0]
    assert first.id == rows["train"][0].rsplit(".", 1)[0]
    x0, y0, x1, y1 = first.box
    assert x1 - x0 == y1 - y0 >= 40
    path = prepare_dataset("affectnet8", str(tmp_path), 24, str(tmp_path / "cache"), workers=1)
    data = load_prepared(path)
    # the replica paints the face box (code * 20, 100, 200); the crop must be that flat colour
    for img, code in zip(data.train.images, data.train.native_labels):
        assert np.abs(img.reshape(-1, 3).mean(0) - (code * 20, 100, 200)).max() < 6
    assert data.class_names == tuple(CANONICAL_CLASSES)


def test_missing_and_corrupt_images_are_found_by_verify_and_skipped_by_prepare(tmp_path: Path) -> None:
    rows = write_affectnet_csv_replica(tmp_path, TRAIN_CODES, VAL_CODES)
    missing = tmp_path / "Manually_Annotated_Images" / rows["train"][2]
    corrupt = tmp_path / "Manually_Annotated_Images" / rows["test"][1]
    os.remove(missing)
    corrupt_file(corrupt)
    sv = survey("affectnet8", str(tmp_path), strict=False)
    problems = check_images(sv.records, workers=1)
    assert sorted((p.kind, p.where) for p in problems) == [("missing", str(missing)), ("unreadable", str(corrupt))]
    with pytest.raises(FERBenchError, match=f"{missing}: unreadable image"):
        prepare_dataset("affectnet8", str(tmp_path), 16, str(tmp_path / "cache"), workers=1)
    assert not any((tmp_path / "cache" / "prepared").iterdir())  # nothing partial left behind
    path = prepare_dataset("affectnet8", str(tmp_path), 16, str(tmp_path / "cache"), on_bad_image="skip", workers=1)
    info = load_prepared(path).info
    assert [b["path"] for b in info["bad_images"]] == [str(missing), str(corrupt)]
    assert info["counts"]["train"]["images"] == 13 - 1 and info["counts"]["test"]["images"] == 9 - 1


def test_csv_malformed_rows(tmp_path: Path) -> None:
    write_affectnet_csv_replica(tmp_path, [0, 1], [2])
    val = tmp_path / "Manually_Annotated_file_lists" / "validation.csv"
    line = val.read_text().splitlines()[0].split(",")
    val.write_text(",".join(line[:6] + ["11"] + line[7:]) + "\n" + ",".join(line[:5]) + "\n")
    with pytest.raises(FERBenchError) as info:
        read_affectnet(tmp_path, 8)
    assert str(info.value) == f"{val}:1: expected an expression code in 0..10, got '11'"
    report = ReadReport(strict=False)
    read_affectnet(tmp_path, 8, report=report)
    assert [(p.kind, p.where) for p in report.problems] == [("mislabelled", f"{val}:1"), ("malformed", f"{val}:2")]
    assert "expected 9 comma-separated fields" in report.problems[1].message


def test_npy_layout_with_a_string_exp_array(tmp_path: Path) -> None:
    ids = write_affectnet_npy_replica(tmp_path, [0, 1, 1, 2, 3, 4, 5, 6, 7, 9], [0, 1, 2, 3, 4, 5, 6, 7],
                                      string_ids=["3", "50001"], size=32)
    ann = tmp_path / "train_set" / "annotations"
    assert np.load(ann / "3_exp.npy").dtype.kind == "U" and read_exp_npy(ann / "3_exp.npy") == 2
    report = ReadReport()
    records = read_affectnet(tmp_path, 8, report=report)
    assert _by_class(records, "train") == {"Neutral": 1, "Happy": 2, "Sad": 1, "Surprise": 1, "Fear": 1,
                                           "Disgust": 1, "Anger": 1, "Contempt": 1}
    assert len([r for r in records if r.split == "test"]) == 8  # val_set: tolerant of any count (3,999 or 4,000)
    assert report.dropped == {("train", "code 9 Uncertain"): 1}
    assert {r.id for r in records if r.split == "test"} == set(ids["test"])
    assert len(read_affectnet(tmp_path, 7)) == 8 + 7


def test_npy_missing_annotation(tmp_path: Path) -> None:
    write_affectnet_npy_replica(tmp_path, [0, 1], [2], size=32)
    missing = tmp_path / "train_set" / "annotations" / "1_exp.npy"
    os.remove(missing)
    with pytest.raises(FERBenchError) as info:
        read_affectnet(tmp_path, 8)
    assert str(info.value) == f"{missing}: no expression annotation for 1.jpg"


def test_wrong_layout(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(FERBenchError, match="expected Manually_Annotated_file_lists/"):
        read_affectnet(tmp_path, 8)
