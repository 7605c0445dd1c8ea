"""Readers for FERPlus (docs/guides/datasets.md#fer2013-and-ferplus), in either distributed form, with named
label protocols.

CSV form: `fer2013.csv` (emotion,pixels,Usage; 48x48 grayscale pixels inline) and Microsoft's
`fer2013new.csv` (Usage,Image name,<10 vote columns>), joined by *row position*: the README says the rows
are in the same order, while image names are sometimes empty (not exported) or duplicated.
Folder form: Microsoft's `FER2013{Train,Valid,Test}/label.csv` (name,"(x, y, w, h)",<10 votes>, no header)
next to the exported PNGs.

Label protocols:
- `majority8` (microsoft/FERPlus src/ferplus.py): zero every single vote, keep the argmax iff it has more
  than half of all (10-column) votes, else the image is unknown; drop unknown and NF. 8 classes.
- `argmax7` (ShuvenduRoy/SSL_FER): plain argmax over the 10 columns (first on ties), drop contempt,
  unknown and NF. 7 classes.
Train = FER2013Train (+ FER2013Valid with `train_with_valid`, as LEAF does); test = FER2013Test.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bench.data.labels import FERPLUS_COLUMNS, FERPLUS_TO_CANONICAL
from bench.data.records import ReadReport, SampleRecord, resolve_layout
from bench.errors import FERBenchError

FER2013_HEADER: tuple[str, ...] = ("emotion", "pixels", "Usage")
FERPLUS_HEADER: tuple[str, ...] = ("Usage", "Image name", *FERPLUS_COLUMNS)
USAGE_FOLDERS: dict[str, str] = {"Training": "FER2013Train", "PublicTest": "FER2013Valid",
                                 "PrivateTest": "FER2013Test"}
FOLDER_SPLITS: dict[str, str] = {"FER2013Train": "train", "FER2013Valid": "valid", "FER2013Test": "test"}
UNKNOWN, NF = 8, 9
LAYOUTS: tuple[str, ...] = ("auto", "csv", "folders")


def majority8(votes: Sequence[float]) -> int:
    """Microsoft's majority rule: the winning column, UNKNOWN when no column has > half of the votes."""
    v = np.asarray(votes, dtype=np.float64).copy()
    v[v < 1.0 + np.finfo(float).eps] = 0.0  # single votes are outliers
    top = int(np.argmax(v))
    return top if v[top] > 0.5 * v.sum() else UNKNOWN


def argmax7(votes: Sequence[float]) -> int:
    """SSL_FER's rule: the argmax over all ten columns (first column on ties)."""
    return int(np.argmax(np.asarray(votes, dtype=np.float64)))


#: protocol -> (rule giving a column, number of classes kept)
PROTOCOLS: dict[str, tuple[Callable[[Sequence[float]], int], int]] = {"majority8": (majority8, 8),
                                                                      "argmax7": (argmax7, 7)}


def _label(votes: list[int], protocol: str, split: str, report: ReadReport) -> int | None:
    rule, num_classes = PROTOCOLS[protocol]
    column = rule(votes)
    if column >= num_classes:
        report.drop(split, f"{protocol}: {FERPLUS_COLUMNS[column]}")
        return None
    return column


def _votes(fields: list[str]) -> list[int] | None:
    try:
        votes = [int(float(f)) for f in fields]
    except ValueError:
        return None
    return votes if len(votes) == len(FERPLUS_COLUMNS) and min(votes) >= 0 else None


def detect_layout(root: Path) -> str:
    if not root.is_dir():
        raise FERBenchError(f"FERPlus root {root} does not exist or is not a folder")
    if (root / "fer2013new.csv").is_file() or (root / "fer2013.csv").is_file():
        return "csv"
    if any((root / folder).is_dir() for folder in FOLDER_SPLITS):
        return "folders"
    raise FERBenchError(f"FERPlus root {root}: expected fer2013.csv + fer2013new.csv, or the folders "
                        f"{', '.join(FOLDER_SPLITS)} (each with label.csv) inside it")


def _rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise FERBenchError(f"FERPlus file not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [row for row in csv.reader(f) if row]


def _check_header(path: Path, row: list[str], expected: tuple[str, ...]) -> None:
    if tuple(c.strip() for c in row) != expected:
        raise FERBenchError(f"{path}:1: expected the header {','.join(expected)}, got {','.join(row)[:120]!r}")


def _read_csv_form(root: Path, protocol: str, train_with_valid: bool, report: ReadReport) -> list[SampleRecord]:
    fer_path, new_path = root / "fer2013.csv", root / "fer2013new.csv"
    fer, new = _rows(fer_path), _rows(new_path)
    _check_header(fer_path, fer[0], FER2013_HEADER)
    _check_header(new_path, new[0], FERPLUS_HEADER)
    if len(fer) != len(new):
        raise FERBenchError(f"{new_path}: {len(new) - 1} data rows but {fer_path} has {len(fer) - 1}; the two "
                            "files are joined by row position and must have the same number of rows")
    fer_abs = str(fer_path.absolute())
    records: list[SampleRecord] = []
    for row, (a, b) in enumerate(zip(fer[1:], new[1:])):
        lineno = row + 2
        if len(a) != 3 or len(b) != len(FERPLUS_HEADER):
            bad = (fer_path, 3, len(a)) if len(a) != 3 else (new_path, len(FERPLUS_HEADER), len(b))
            report.problem("malformed", f"{bad[0]}:{lineno}", f"expected {bad[1]} fields, got {bad[2]}")
            continue
        usage = a[2].strip()
        if usage not in USAGE_FOLDERS:
            report.problem("malformed", f"{fer_path}:{lineno}", f"expected Usage in {', '.join(USAGE_FOLDERS)}, "
                           f"got {usage!r}")
            continue
        if b[0].strip() != usage:
            report.problem("malformed", f"{new_path}:{lineno}", f"Usage {b[0]!r} disagrees with {fer_path.name} "
                           f"row {row} ({usage!r}): the files are not row-aligned")
            continue
        split = FOLDER_SPLITS[USAGE_FOLDERS[usage]]
        if not b[1].strip():  # Microsoft exports no image for these rows and gives them no label
            report.drop(split, "no FERPlus image name")
            continue
        votes = _votes(b[2:])
        if votes is None:
            report.problem("mislabelled", f"{new_path}:{lineno}", f"expected {len(FERPLUS_COLUMNS)} non-negative "
                           f"integer vote counts, got {b[2:]}")
            continue
        try:
            pixels = np.array(a[1].split(), dtype=np.int16)
        except ValueError:
            pixels = np.zeros(0, np.int16)
        if pixels.size != 48 * 48 or pixels.min() < 0 or pixels.max() > 255:
            report.problem("malformed", f"{fer_path}:{lineno}", f"expected 2304 pixel values in 0..255, got "
                           f"{pixels.size} values")
            continue
        if split == "valid" and not train_with_valid:
            report.drop(split, "FER2013Valid not used (train_with_valid=false)")
            continue
        column = _label(votes, protocol, split, report)
        if column is None:
            continue
        records.append(SampleRecord(id=f"row{row:05d}", path=fer_abs, label=FERPLUS_TO_CANONICAL[column],
                                    native_label=column, split="train" if split == "valid" else split,
                                    pixels=pixels.astype(np.uint8).reshape(48, 48)))
    return records


def _parse_rect(text: str) -> tuple[float, float, float, float] | None:
    try:
        x, y, w, h = (float(v) for v in text.strip().strip("()").split(","))
    except ValueError:
        return None
    return (x, y, x + w, y + h)


def _read_folder_form(root: Path, protocol: str, train_with_valid: bool,
                      report: ReadReport) -> list[SampleRecord]:
    records: list[SampleRecord] = []
    for folder, split in FOLDER_SPLITS.items():
        if split == "valid" and not train_with_valid:
            continue
        label_file = root / folder / "label.csv"
        if not label_file.is_file():
            raise FERBenchError(f"FERPlus label file not found: {label_file}")
        image_dir = (root / folder).absolute()
        for lineno, row in enumerate(_rows(label_file), start=1):
            where = f"{label_file}:{lineno}"
            if len(row) != 2 + len(FERPLUS_COLUMNS):
                report.problem("malformed", where, f"expected name,\"(x, y, w, h)\" and {len(FERPLUS_COLUMNS)} "
                               f"vote counts ({2 + len(FERPLUS_COLUMNS)} fields), got {len(row)} fields")
                continue
            name, box, votes = row[0].strip(), _parse_rect(row[1]), _votes(row[2:])
            if box is None:
                report.problem("malformed", where, f"expected a face rectangle like \"(0, 0, 48, 48)\", got {row[1]!r}")
                continue
            if votes is None:
                report.problem("mislabelled", where, f"expected {len(FERPLUS_COLUMNS)} non-negative integer "
                               f"vote counts, got {row[2:]}")
                continue
            column = _label(votes, protocol, split, report)
            if column is None:
                continue
            full = box == (0.0, 0.0, 48.0, 48.0)  # every shipped rectangle is the whole image
            records.append(SampleRecord(id=f"{folder}/{Path(name).stem}", path=str(image_dir / name),
                                        label=FERPLUS_TO_CANONICAL[column], native_label=column,
                                        split="train" if split == "valid" else split,
                                        box=None if full else box))
    return records


def read_ferplus(root: str | Path, protocol: str = "majority8", layout: str = "auto", train_with_valid: bool = False,
                 report: ReadReport | None = None) -> list[SampleRecord]:
    """FERPlus records under a label protocol (`majority8` or `argmax7`) from either layout."""
    if protocol not in PROTOCOLS:
        raise FERBenchError(f"FERPlus label protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    root = Path(root)
    layout = resolve_layout("FERPlus", root, layout, LAYOUTS, detect_layout)
    report = report if report is not None else ReadReport()
    read = _read_csv_form if layout == "csv" else _read_folder_form
    report.notes.append(f"FERPlus {layout} layout, protocol {protocol}, train_with_valid={train_with_valid}")
    return read(root, protocol, train_with_valid, report)
