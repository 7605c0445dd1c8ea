"""Readers for AffectNet's two distributed layouts (docs/guides/datasets.md#affectnet).

Legacy "Manually_Annotated" release:
    Manually_Annotated_file_lists/training.csv     (header row)
    Manually_Annotated_file_lists/validation.csv   (header row in some copies, none in others: sniffed)
    Manually_Annotated_Images/<dir>/<name>.jpg
  columns: subDirectory_filePath, face_x, face_y, face_width, face_height, facial_landmarks (136 floats
  joined by ';' inside one field), expression, valence, arousal. Images are cropped to the face box.

Newer layout ("AffectNet-8Labels" mirrors):
    {train_set,val_set}/images/<id>.jpg
    {train_set,val_set}/annotations/<id>_exp.npy   (0-d array: a number or a string such as '3')

Validation is the test split (the official test set is unreleased). Codes 8 None, 9 Uncertain and
10 No-Face are dropped; the 7-class protocol drops 7 Contempt too. Both are counted in the report.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from bench.data.labels import AFFECTNET_NATIVE_NAMES, AFFECTNET_NON_EXPRESSION, AFFECTNET_TO_CANONICAL
from bench.data.records import ReadReport, SampleRecord, resolve_layout
from bench.errors import FERBenchError

CSV_COLUMNS: tuple[str, ...] = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                                "facial_landmarks", "expression", "valence", "arousal")
CSV_FILES: dict[str, str] = {"train": "training.csv", "test": "validation.csv"}
NPY_DIRS: dict[str, str] = {"train": "train_set", "test": "val_set"}
LAYOUTS: tuple[str, ...] = ("auto", "csv", "npy")
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")


def detect_layout(root: Path) -> str:
    """'csv' or 'npy' from the folders present, or a FERBenchError saying what was expected."""
    if not root.is_dir():
        raise FERBenchError(f"AffectNet root {root} does not exist or is not a folder")
    if (root / "Manually_Annotated_file_lists").is_dir():
        return "csv"
    if (root / "train_set").is_dir() or (root / "val_set").is_dir():
        return "npy"
    raise FERBenchError(f"AffectNet root {root}: expected Manually_Annotated_file_lists/ (+ "
                        "Manually_Annotated_Images/) or train_set/ + val_set/ inside it")


def _keep(code: int, num_classes: int, split: str, report: ReadReport) -> bool:
    """Whether an expression code belongs to the protocol; counts the ones it drops."""
    if code in AFFECTNET_NON_EXPRESSION:
        report.drop(split, f"code {code} {AFFECTNET_NON_EXPRESSION[code]}")
        return False
    if code >= num_classes:
        report.drop(split, f"code {code} {AFFECTNET_NATIVE_NAMES[code]} ({num_classes}-class protocol)")
        return False
    return True


def _parse_code(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    code = int(value)
    return code if code == value and 0 <= code <= 10 else None


def _read_csv_split(root: Path, split: str, num_classes: int, report: ReadReport) -> list[SampleRecord]:
    list_file = root / "Manually_Annotated_file_lists" / CSV_FILES[split]
    image_dir = (root / "Manually_Annotated_Images").absolute()
    if not list_file.is_file():
        raise FERBenchError(f"AffectNet list file not found: {list_file}")
    if not image_dir.is_dir():
        raise FERBenchError(f"AffectNet image folder not found: {image_dir}")
    records: list[SampleRecord] = []
    seen: dict[str, int] = {}
    with open(list_file, newline="", encoding="utf-8-sig") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            where = f"{list_file}:{lineno}"
            if lineno == 1 and row[0].strip() == CSV_COLUMNS[0]:  # a header row (sniffed: not always there)
                continue
            if len(row) != len(CSV_COLUMNS):
                report.problem("malformed", where, f"expected {len(CSV_COLUMNS)} comma-separated fields "
                               f"({', '.join(CSV_COLUMNS)}), got {len(row)}")
                continue
            rel = row[0].strip()
            code = _parse_code(row[6])
            if code is None:
                report.problem("mislabelled", where, f"expected an expression code in 0..10, got {row[6]!r}")
                continue
            try:
                x, y, w, h = (float(v) for v in row[1:5])
            except ValueError:
                report.problem("malformed", where, f"expected numeric face_x, face_y, face_width, face_height, "
                               f"got {row[1:5]}")
                continue
            if rel in seen:
                report.problem("malformed", where, f"duplicate image {rel!r} (first on line {seen[rel]})")
                continue
            seen[rel] = lineno
            if not _keep(code, num_classes, split, report):
                continue
            box = (x, y, x + w, y + h) if w > 0 and h > 0 else None
            records.append(SampleRecord(id=rel.rsplit(".", 1)[0], path=str(image_dir / rel),
                                        label=AFFECTNET_TO_CANONICAL[code], native_label=code, split=split,
                                        box=box))
    return records


def read_exp_npy(path: Path) -> int | None:
    """The expression code in an `_exp.npy` file (numeric or 0-d string array), None if not a valid code."""
    value = np.load(path, allow_pickle=False)
    if value.shape not in ((), (1,)):
        return None
    return _parse_code(str(value.reshape(()).item()).strip())


def _read_npy_split(root: Path, split: str, num_classes: int, report: ReadReport) -> list[SampleRecord]:
    base = root / NPY_DIRS[split]
    image_dir, ann_dir = (base / "images").absolute(), base / "annotations"
    for d in (image_dir, ann_dir):
        if not d.is_dir():
            raise FERBenchError(f"AffectNet folder not found: {d} (expected {NPY_DIRS[split]}/images and "
                                f"{NPY_DIRS[split]}/annotations)")
    records: list[SampleRecord] = []
    for image in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        ann = ann_dir / f"{image.stem}_exp.npy"
        if not ann.is_file():
            report.problem("missing", str(ann), f"no expression annotation for {image.name}")
            continue
        try:
            code = read_exp_npy(ann)
        except (OSError, ValueError) as e:
            report.problem("malformed", str(ann), f"cannot read the expression array: {e}")
            continue
        if code is None:
            report.problem("mislabelled", str(ann), "expected a 0-d array holding an expression code in 0..10")
            continue
        if _keep(code, num_classes, split, report):
            records.append(SampleRecord(id=image.stem, path=str(image), label=AFFECTNET_TO_CANONICAL[code],
                                        native_label=code, split=split))
    return records


def read_affectnet(root: str | Path, num_classes: int, layout: str = "auto",
                   report: ReadReport | None = None) -> list[SampleRecord]:
    """Train (training.csv / train_set) and test (validation.csv / val_set) records of AffectNet-7 or -8."""
    if num_classes not in (7, 8):
        raise FERBenchError(f"AffectNet num_classes={num_classes}: expected 7 or 8")
    root = Path(root)
    layout = resolve_layout("AffectNet", root, layout, LAYOUTS, detect_layout)
    report = report if report is not None else ReadReport()
    read_split = _read_csv_split if layout == "csv" else _read_npy_split
    report.notes.append(f"AffectNet {layout} layout, {num_classes} classes")
    return [r for split in ("train", "test") for r in read_split(root, split, num_classes, report)]
