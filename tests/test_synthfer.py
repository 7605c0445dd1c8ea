"""synthfer: deterministic, read back through the RAF-DB reader, RAF-DB-like imbalance."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from bench.data.labels import CANONICAL_CLASSES
from bench.data.rafdb import find_missing, read_rafdb
from bench.data.synthfer import class_counts, contact_sheet, ensure_synthfer, generate_synthfer
from bench.errors import FERBenchError

SMALL = {"n_train": 21, "n_test": 14, "size": 64}


def _files(basic: Path) -> dict[str, bytes]:
    return {str(p.relative_to(basic)): p.read_bytes() for p in sorted(basic.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthfer(tmp_path_factory.mktemp("a"), seed=3, **SMALL)


def test_deterministic(small: Path, tmp_path: Path) -> None:
    again = generate_synthfer(tmp_path / "b", seed=3, **SMALL)
    assert _files(small) == _files(again)
    assert "EmoLabel/list_patition_label.txt" in _files(small)


def test_workers_do_not_change_output(small: Path, tmp_path: Path) -> None:
    parallel = generate_synthfer(tmp_path / "w", seed=3, workers=2, **SMALL)
    assert _files(small) == _files(parallel)


def test_other_seed_differs(small: Path, tmp_path: Path) -> None:
    other = _files(generate_synthfer(tmp_path / "c", seed=4, **SMALL))
    mine = _files(small)
    assert other.keys() == mine.keys()
    assert all(other[k] != mine[k] for k in mine)


def test_read_back(small: Path) -> None:
    records = read_rafdb(small.parent)
    assert find_missing(records) == []
    train = [r for r in records if r.split == "train"]
    test = [r for r in records if r.split == "test"]
    assert len(train) == 21 and len(test) == 14
    assert train[0].id == "train_00001" and test[0].id == "test_0001"
    names = set(CANONICAL_CLASSES[:7])
    assert {CANONICAL_CLASSES[r.label] for r in train} == names == {CANONICAL_CLASSES[r.label] for r in test}
    with Image.open(train[0].path) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (64, 64)
    meta = json.loads((small.parent / "synthfer.json").read_text())
    assert meta["seed"] == 3 and meta["n_train"] == 21 and meta["version"].startswith("synthfer")
    assert [p.name for p in small.parent.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_imbalance_like_rafdb() -> None:
    counts = class_counts(350)  # RAF-DB native order: Sur, Fea, Dis, Hap, Sad, Ang, Neu
    assert sum(counts) == 350 and min(counts) >= 3
    assert counts.index(max(counts)) == 3 and counts.index(min(counts)) == 1
    assert class_counts(7) == [1] * 7


def test_imbalance_on_disk(tmp_path: Path) -> None:
    basic = generate_synthfer(tmp_path, n_train=300, n_test=7, size=32, occlusion_prob=0.0)
    per_class = Counter(CANONICAL_CLASSES[r.label] for r in read_rafdb(basic) if r.split == "train")
    assert per_class.most_common()[0][0] == "Happy" and per_class.most_common()[-1][0] == "Fear"
    assert len(per_class) == 7


def test_label_noise_only_train(tmp_path: Path) -> None:
    clean = read_rafdb(generate_synthfer(tmp_path / "clean", n_train=200, n_test=50, size=32))
    noisy = read_rafdb(generate_synthfer(tmp_path / "noisy", n_train=200, n_test=50, size=32, label_noise=0.5))
    flipped = [a.id for a, b in zip(clean, noisy) if a.label != b.label]
    assert 50 < len(flipped) < 150 and all(i.startswith("train") for i in flipped)


def test_ensure_caches(tmp_path: Path) -> None:
    basic = ensure_synthfer(tmp_path, seed=1, **SMALL)
    assert basic.parent.name.startswith("synthfer-") and len(read_rafdb(basic)) == 35
    stamp = (basic / "EmoLabel" / "list_patition_label.txt").stat().st_mtime_ns
    assert ensure_synthfer(tmp_path, seed=1, workers=2, **SMALL) == basic  # workers: same dataset
    assert (basic / "EmoLabel" / "list_patition_label.txt").stat().st_mtime_ns == stamp
    assert ensure_synthfer(tmp_path, seed=2, **SMALL) != basic
    assert sorted(p.name.startswith(".") for p in tmp_path.iterdir()) == [False, False]


def test_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(FERBenchError, match="n_train"):
        generate_synthfer(tmp_path, n_train=3)
    with pytest.raises(FERBenchError, match="label_noise"):
        generate_synthfer(tmp_path, label_noise=1.5)
    with pytest.raises(FERBenchError, match="unknown"):
        ensure_synthfer(tmp_path, colour=True)
    (tmp_path / "basic").mkdir()
    with pytest.raises(FERBenchError, match="not a synthfer output"):
        generate_synthfer(tmp_path, **SMALL)


def test_contact_sheet(small: Path, tmp_path: Path) -> None:
    path = contact_sheet(small, tmp_path / "sheet.png", per_class=2)
    with Image.open(path) as im:
        assert im.size[1] == 7 * (64 + 2)
