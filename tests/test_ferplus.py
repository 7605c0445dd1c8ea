"""FERPlus readers and label protocols on replicas of both layouts (docs/guides/datasets.md#fer2013-and-ferplus)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.data.cache import load_prepared, prepare_dataset
from bench.data.ferplus import argmax7, majority8, read_ferplus
from bench.data.labels import CANONICAL_CLASSES, FER2013_TO_CANONICAL, FERPLUS_COLUMNS, FERPLUS_TO_CANONICAL
from bench.data.records import ReadReport
from bench.data.replicas import FerRow, ferplus_votes, write_ferplus_replica
from bench.errors import FERBenchError

V = ferplus_votes
ROWS = [
    FerRow("Training", "fer0000000.png", V(neutral=10)),                       # r0  N / N
    FerRow("Training", "fer0000001.png", V(happiness=6, surprise=4)),          # r1  H / H
    FerRow("Training", "", V(neutral=10)),                                     # r2  no name: not exported
    FerRow("Training", "fer0000003.png", V(sadness=4, anger=4, neutral=2)),    # r3  tie: unknown / Sad (first)
    FerRow("Training", "fer0000004.png",                                       # r4  singles zeroed: 5 > 2.5
           V(happiness=5, neutral=1, surprise=1, sadness=1, anger=1, disgust=1)),  # -> H / H
    FerRow("Training", "fer0000005.png", V(unknown=6, neutral=4)),             # r5  unknown / unknown
    FerRow("Training", "fer0000006.png", V(NF=10)),                            # r6  NF / NF
    FerRow("Training", "fer0000007.png", V(contempt=7, neutral=3)),            # r7  Contempt / dropped (7 cls)
    FerRow("Training", "fer0000007.png", V(fear=8, surprise=2)),               # r8  duplicated name: Fear / Fear
    FerRow("Training", "fer0000009.png", V(disgust=3, anger=3, contempt=2, neutral=2)),  # r9 unknown / Anger
    FerRow("PublicTest", "fer0000010.png", V(surprise=9, fear=1)),             # r10 Surprise / Surprise
    FerRow("PublicTest", "", V(happiness=10)),                                 # r11 no name
    FerRow("PrivateTest", "fer0000012.png", V(anger=7, disgust=3)),            # r12 Anger / Anger
    FerRow("PrivateTest", "fer0000013.png", V(sadness=5, neutral=5)),          # r13 unknown / Neutral
    FerRow("PrivateTest", "fer0000014.png", V(happiness=2, surprise=2, neutral=1)),  # r14 unknown / Happy
    FerRow("PrivateTest", "fer0000015.png", V(disgust=6, anger=2, NF=2)),      # r15 Disgust / Disgust
]
NAMES8 = list(CANONICAL_CLASSES)


def _counts(records, split: str, n: int) -> list[int]:
    c = Counter(r.label for r in records if r.split == split)
    return [c[i] for i in range(n)]


def test_label_rules_on_single_rows() -> None:
    assert majority8(V(happiness=5, neutral=1, surprise=1, sadness=1, anger=1, disgust=1)) == 1
    assert majority8(V(happiness=5, neutral=5)) == 8  # 5 is not more than half of 10
    assert majority8(V(neutral=1, happiness=1)) == 8  # every vote is a single: nothing left
    assert argmax7(V(sadness=4, anger=4)) == FERPLUS_COLUMNS.index("sadness")


def test_label_maps_by_name() -> None:
    ferplus = ["Neutral", "Happy", "Surprise", "Sad", "Anger", "Disgust", "Fear", "Contempt"]
    assert [CANONICAL_CLASSES[FERPLUS_TO_CANONICAL[i]] for i in range(8)] == ferplus
    assert [FERPLUS_TO_CANONICAL[i] for i in range(8)] == [0, 1, 3, 2, 6, 5, 4, 7]
    fer2013 = ["Anger", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]
    assert [CANONICAL_CLASSES[FER2013_TO_CANONICAL[i]] for i in range(7)] == fer2013


def test_csv_majority8_joins_by_row_position(tmp_path: Path) -> None:
    write_ferplus_replica(tmp_path, ROWS)
    report = ReadReport()
    records = read_ferplus(tmp_path, "majority8", report=report)
    #                                 Neu Hap Sad Sur Fea Dis Ang Con
    assert _counts(records, "train", 8) == [1, 2, 0, 0, 1, 0, 0, 1]  # r0 r1 r4 r7 r8 (both rows named 0000007)
    assert _counts(records, "test", 8) == [0, 0, 0, 0, 0, 1, 1, 0]  # r12 r15
    assert [r.id for r in records if r.split == "train"] == ["row00000", "row00001", "row00004", "row00007",
                                                             "row00008"]
    assert report.dropped == {("train", "no FERPlus image name"): 1, ("train", "majority8: unknown"): 3,
                              ("train", "majority8: NF"): 1, ("valid", "no FERPlus image name"): 1,
                              ("valid", "FER2013Valid not used (train_with_valid=false)"): 1,
                              ("test", "majority8: unknown"): 2}
    with_valid = read_ferplus(tmp_path, "majority8", train_with_valid=True)
    assert _counts(with_valid, "train", 8) == [1, 2, 0, 1, 1, 0, 0, 1]  # + r10 Surprise


def test_csv_argmax7(tmp_path: Path) -> None:
    write_ferplus_replica(tmp_path, ROWS)
    report = ReadReport()
    records = read_ferplus(tmp_path, "argmax7", report=report)
    #                                 Neu Hap Sad Sur Fea Dis Ang
    assert _counts(records, "train", 7) == [1, 2, 1, 0, 1, 0, 1]  # r0 r1 r3 r4 r8 r9
    assert _counts(records, "test", 7) == [1, 1, 0, 0, 0, 1, 1]  # r12 r13 r14 r15
    assert report.dropped[("train", "argmax7: contempt")] == 1
    assert report.dropped[("train", "argmax7: unknown")] == 1 and report.dropped[("train", "argmax7: NF")] == 1


def test_folder_layout_matches_microsofts_export(tmp_path: Path) -> None:
    write_ferplus_replica(tmp_path, ROWS, layout="folders")
    records = read_ferplus(tmp_path, "majority8")
    # no-name rows are not exported; the later row of a duplicated name overwrote the earlier one
    assert _counts(records, "train", 8) == [1, 2, 0, 0, 1, 0, 0, 0]
    assert _counts(records, "test", 8) == [0, 0, 0, 0, 0, 1, 1, 0]
    assert {r.id for r in records if r.split == "train"} == {"FER2013Train/fer0000000", "FER2013Train/fer0000001",
                                                             "FER2013Train/fer0000004", "FER2013Train/fer0000007"}
    assert _counts(read_ferplus(tmp_path, "majority8", train_with_valid=True), "train", 8) == [1, 2, 0, 1, 1, 0, 0, 0]


def test_both_layouts_prepare_the_same_grayscale_pixels_as_rgb(tmp_path: Path) -> None:
    rows = [r for r in ROWS if r.name and r.name != "fer0000007.png"]
    write_ferplus_replica(tmp_path / "csv", rows)
    write_ferplus_replica(tmp_path / "png", rows, layout="folders")
    a = load_prepared(prepare_dataset("ferplus", str(tmp_path / "csv"), 48, str(tmp_path / "cache"), workers=1))
    b = load_prepared(prepare_dataset("ferplus", str(tmp_path / "png"), 48, str(tmp_path / "cache"), workers=1))
    assert a.train.images.shape[1:] == (48, 48, 3)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    np.testing.assert_array_equal(a.train.images[..., 0], a.train.images[..., 2])  # gray -> 3 equal channels
    png = np.asarray(Image.open(tmp_path / "png" / "FER2013Train" / "fer0000000.png"))
    np.testing.assert_array_equal(a.train.images[0, ..., 0], png)
    assert a.name == "ferplus" and a.info["label_protocol"] == "majority8"
    c = load_prepared(prepare_dataset("ferplus", str(tmp_path / "csv"), 48, str(tmp_path / "cache"), workers=1,
                                      label_protocol="argmax7"))
    assert c.name == "ferplus-argmax7" and c.num_classes == 7 and c.path != a.path


def test_csv_errors(tmp_path: Path) -> None:
    write_ferplus_replica(tmp_path, ROWS[:3])
    new = tmp_path / "fer2013new.csv"
    lines = new.read_text().splitlines()
    new.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(FERBenchError) as info:
        read_ferplus(tmp_path)
    assert str(info.value) == (f"{new}: 2 data rows but {tmp_path / 'fer2013.csv'} has 3; the two files are joined "
                               "by row position and must have the same number of rows")
    new.write_text("\n".join(lines[:3] + [lines[3].replace("Training", "PublicTest", 1)]) + "\n")
    with pytest.raises(FERBenchError, match=f"{new}:4: Usage 'PublicTest' disagrees with fer2013.csv row 2"):
        read_ferplus(tmp_path)
    new.write_text("Usage,name\n" + "\n".join(lines[1:]) + "\n")
    with pytest.raises(FERBenchError, match=f"{new}:1: expected the header Usage,Image name,neutral"):
        read_ferplus(tmp_path)
    with pytest.raises(FERBenchError, match="unknown label protocol 'majority7'"):
        from bench.data.datasets import get_dataset

        get_dataset("ferplus").num_classes_for("majority7")


def test_folder_label_errors(tmp_path: Path) -> None:
    write_ferplus_replica(tmp_path, ROWS, layout="folders")
    label = tmp_path / "FER2013Test" / "label.csv"
    label.write_text(label.read_text() + 'fer0000099.png,"(0, 0, 48, 48)",1,2,x,0,0,0,0,0,0,0\n')
    with pytest.raises(FERBenchError, match=f"{label}:5: expected 10 non-negative integer vote counts"):
        read_ferplus(tmp_path)
