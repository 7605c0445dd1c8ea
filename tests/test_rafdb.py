"""RAF-DB basic reader on faithful replicas."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from bench.data.labels import CANONICAL_CLASSES
from bench.data.rafdb import find_missing, read_rafdb
from bench.data.replicas import write_rafdb_replica
from bench.errors import FERBenchError

# Every class in both splits, with distinct counts so a wrong map shows up in the counts.
TRAIN = [1] * 3 + [2] * 1 + [3] * 2 + [4] * 7 + [5] * 4 + [6] * 2 + [7] * 5
TEST = [1, 2, 3, 4, 4, 4, 5, 5, 6, 7, 7, 7, 7]


def _names(records) -> Counter:
    return Counter(CANONICAL_CLASSES[r.label] for r in records)


@pytest.mark.parametrize("spelling", ["patition", "partition"])
@pytest.mark.parametrize("fields", [2, 3])
def test_read_replica(tmp_path: Path, spelling: str, fields: int) -> None:
    basic = write_rafdb_replica(tmp_path, TRAIN, TEST, spelling=spelling, fields=fields)
    records = read_rafdb(basic)
    train = [r for r in records if r.split == "train"]
    test = [r for r in records if r.split == "test"]
    assert len(train) == len(TRAIN) and len(test) == len(TEST)
    assert all(r.id.startswith("train_") for r in train) and all(r.id.startswith("test_") for r in test)
    assert _names(train) == {"Surprise": 3, "Fear": 1, "Disgust": 2, "Happy": 7, "Sad": 4, "Anger": 2,
                             "Neutral": 5}
    assert _names(test) == {"Surprise": 1, "Fear": 1, "Disgust": 1, "Happy": 3, "Sad": 2, "Anger": 1,
                            "Neutral": 4}
    first = records[0]
    assert first.id == "train_00001" and first.native_label == 1
    assert Path(first.path) == (basic / "Image" / "aligned" / "train_00001_aligned.jpg").absolute()
    assert find_missing(records) == []


def test_label_map_by_name(tmp_path: Path) -> None:
    basic = write_rafdb_replica(tmp_path, [1, 2, 3, 4, 5, 6, 7], [4, 7])
    by_id = {r.id: r for r in read_rafdb(basic)}
    expected = ["Surprise", "Fear", "Disgust", "Happy", "Sad", "Anger", "Neutral"]
    for code, name in enumerate(expected, start=1):
        record = by_id[f"train_{code:05d}"]
        assert record.native_label == code and CANONICAL_CLASSES[record.label] == name
    assert CANONICAL_CLASSES[by_id["test_0001"].label] == "Happy"
    assert CANONICAL_CLASSES[by_id["test_0002"].label] == "Neutral"


def test_root_parent_and_original_images(tmp_path: Path) -> None:
    basic = write_rafdb_replica(tmp_path, TRAIN, TEST)
    assert read_rafdb(tmp_path) == read_rafdb(basic)
    original = read_rafdb(str(tmp_path), images="original")
    assert Path(original[0].path) == (basic / "Image" / "original" / "train_00001.jpg").absolute()
    assert find_missing(original) == []


def test_missing_image_is_returned_and_found(tmp_path: Path) -> None:
    basic = write_rafdb_replica(tmp_path, TRAIN, TEST)
    os.remove(basic / "Image" / "aligned" / "test_0002_aligned.jpg")
    records = read_rafdb(basic)
    assert len(records) == len(TRAIN) + len(TEST)
    assert [r.id for r in find_missing(records)] == ["test_0002"]


def test_blank_lines_and_crlf(tmp_path: Path) -> None:
    basic = write_rafdb_replica(tmp_path, [4], [7])
    (basic / "EmoLabel" / "list_patition_label.txt").write_bytes(b"\r\ntrain_00001.jpg 4\r\n\r\ntest_0001.jpg\t7\r\n")
    assert [(r.id, r.native_label) for r in read_rafdb(basic)] == [("train_00001", 4), ("test_0001", 7)]


def _write_labels(tmp_path: Path, text: str) -> Path:
    basic = write_rafdb_replica(tmp_path, [1], [1])
    label_file = basic / "EmoLabel" / "list_patition_label.txt"
    label_file.write_text(text)
    return label_file


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("train_00001.jpg 1\ntrain_00002.jpg\n", 2, ["2 or 3 fields"]),
        ("train_00001.jpg 1\n\ntrain_00002.jpg train 1 x\n", 3, ["2 or 3 fields"]),
        ("train_00001.jpg 8\n", 1, ["1..7", "'8'"]),
        ("train_00001.jpg 0\n", 1, ["1..7"]),
        ("train_00001.jpg happy\n", 1, ["1..7", "'happy'"]),
        ("train_00001.jpg 1\nval_0001.jpg 2\n", 2, ["'train' or 'test'", "val_0001.jpg"]),
        ("test_0001.jpg train 3\n", 1, ["disagrees", "'test'"]),
        ("train_00001.jpg 1\ntest_0001.jpg 2\ntrain_00001.jpg 3\n", 3, ["duplicate", "line 1"]),
    ],
)
def test_malformed_lines(tmp_path: Path, text: str, line: int, words: list[str]) -> None:
    label_file = _write_labels(tmp_path, text)
    with pytest.raises(FERBenchError) as info:
        read_rafdb(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert f"{label_file}:{line}:" in message
    for word in words:
        assert word in message


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FERBenchError, match="does not exist"):
        read_rafdb(tmp_path / "nowhere")


def test_missing_label_file(tmp_path: Path) -> None:
    basic = write_rafdb_replica(tmp_path, [1], [1])
    os.remove(basic / "EmoLabel" / "list_patition_label.txt")
    with pytest.raises(FERBenchError) as info:
        read_rafdb(basic)
    assert "list_patition_label.txt" in str(info.value) and "list_partition_label.txt" in str(info.value)


def test_missing_image_folder(tmp_path: Path) -> None:
    write_rafdb_replica(tmp_path, [1], [1])
    with pytest.raises(FERBenchError) as info:
        read_rafdb(tmp_path / "basic", images="original_missing")
    assert "images=" in str(info.value)
    (tmp_path / "basic" / "Image" / "aligned").rename(tmp_path / "elsewhere")
    with pytest.raises(FERBenchError) as info:
        read_rafdb(tmp_path)
    message = str(info.value)
    assert "Image/aligned" in message and "list_patition_label.txt" in message
