"""Small, faithful on-disk replicas of each raw dataset layout (docs/guides/datasets.md#faithful-replicas).

They reproduce the formats' quirks (label-file spellings, header-less CSVs, string `_exp.npy` arrays,
empty and duplicated FERPlus names, row-position joins), so the readers are tested against what users
download. Also used by `ferbench bench prepare` to write thousands of JPEGs in the RAF-DB layout.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bench.data.labels import FERPLUS_COLUMNS


def smooth_image(rng: np.random.Generator, width: int, height: int, channels: int = 3) -> np.ndarray:
    """A smooth random uint8 image (a bilinear blow-up of a coarse grid): JPEG sizes like real photos'."""
    coarse = rng.integers(0, 256, size=(8, 8, channels), dtype=np.uint8)
    mode = "RGB" if channels == 3 else "L"
    im = Image.fromarray(coarse if channels == 3 else coarse[..., 0], mode).resize((width, height), Image.BILINEAR)
    return np.array(im)


def write_jpeg(path: Path, width: int, height: int, rng: np.random.Generator, quality: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(smooth_image(rng, width, height)).save(path, "JPEG", quality=quality)


def corrupt_file(path: Path) -> None:
    """Keep a JPEG's first bytes only: the file exists but cannot be decoded."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:40])


def write_rafdb_replica(root: Path, train_labels: Sequence[int], test_labels: Sequence[int], *,
                        spelling: str = "patition", fields: int = 2, size: int = 100, originals: bool = True,
                        seed: int = 0) -> Path:
    """Write `root/basic` in the RAF-DB basic layout and return the `basic` path.

    Labels are RAF-DB native codes (1..7), one per image, named train_%05d / test_%04d from 1.
    `spelling` is "patition" (official) or "partition"; `fields` is 2 (`name label`) or 3
    (`name split label`). Aligned images are size x size; originals have a random size.
    """
    basic = Path(root) / "basic"
    (basic / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (basic / "Image" / "aligned").mkdir(parents=True, exist_ok=True)
    (basic / "Image" / "original").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for split, labels, width in (("train", train_labels, 5), ("test", test_labels, 4)):
        for i, label in enumerate(labels, start=1):
            stem = f"{split}_{i:0{width}d}"
            lines.append(f"{stem}.jpg {split} {label}" if fields == 3 else f"{stem}.jpg {label}")
            write_jpeg(basic / "Image" / "aligned" / f"{stem}_aligned.jpg", size, size, rng)
            if originals:
                w, h = (int(v) for v in rng.integers(120, 240, size=2))
                write_jpeg(basic / "Image" / "original" / f"{stem}.jpg", w, h, rng)
    (basic / "EmoLabel" / f"list_{spelling}_label.txt").write_text("\n".join(lines) + "\n")
    return basic


AFFECTNET_HEADER = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,"
                    "valence,arousal")


def write_affectnet_csv_replica(root: Path, train_codes: Sequence[int], val_codes: Sequence[int],
                                val_header: bool = False, seed: int = 0) -> dict[str, list[str]]:
    """The legacy Manually_Annotated layout. training.csv has its header; validation.csv has one only
    with `val_header`. Each image is a random size with the face box drawn as a flat colour block
    (colour = (code * 20, 100, 200)), so a test can tell a face crop from the whole image.
    Returns {"train": [subDirectory_filePath, ...], "test": [...]}, in row order.
    """
    root = Path(root)
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written: dict[str, list[str]] = {}
    for split, codes, name, header in (("train", train_codes, "training.csv", True),
                                       ("test", val_codes, "validation.csv", val_header)):
        rows = [AFFECTNET_HEADER] if header else []
        written[split] = []
        for i, code in enumerate(codes):
            rel = f"{(i % 3) + 1}/{split}{i:04d}{rng.integers(16 ** 6):06x}.jpg"
            w, h = (int(v) for v in rng.integers(90, 160, size=2))
            side = int(rng.integers(40, min(w, h) - 10))
            x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
            img = smooth_image(rng, w, h)
            img[y:y + side, x:x + side] = (code * 20, 100, 200)
            path = root / "Manually_Annotated_Images" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path, "JPEG", quality=95)
            landmarks = ";".join(f"{v:.2f}" for v in rng.uniform(0, side, size=136))
            valence, arousal = (-2.0, -2.0) if code >= 8 else tuple(np.round(rng.uniform(-1, 1, 2), 4))
            rows.append(f"{rel},{x},{y},{side},{side},{landmarks},{code},{valence},{arousal}")
            written[split].append(rel)
        (lists / name).write_text("\n".join(rows) + "\n")
    return written


def write_affectnet_npy_replica(root: Path, train_codes: Sequence[int], val_codes: Sequence[int],
                                string_ids: Sequence[str] = (), size: int = 224, seed: int = 0) -> dict[str, list[str]]:
    """The newer layout: {train,val}_set/images/<id>.jpg + annotations/<id>_{exp,val,aro,lnd}.npy.
    Ids listed in `string_ids` get their `_exp.npy` saved as a 0-d string array (as some mirrors do).
    Returns {"train": [ids], "test": [ids]}."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    written: dict[str, list[str]] = {}
    for split, folder, codes in (("train", "train_set", train_codes), ("test", "val_set", val_codes)):
        (root / folder / "images").mkdir(parents=True, exist_ok=True)
        (root / folder / "annotations").mkdir(parents=True, exist_ok=True)
        written[split] = []
        for i, code in enumerate(codes):
            image_id = f"{i + (0 if split == 'train' else 50000)}"
            write_jpeg(root / folder / "images" / f"{image_id}.jpg", size, size, rng)
            ann = root / folder / "annotations"
            exp = np.array(str(code)) if image_id in string_ids else np.array(code, dtype=np.int64)
            np.save(ann / f"{image_id}_exp.npy", exp)
            np.save(ann / f"{image_id}_val.npy", np.array(rng.uniform(-1, 1)))
            np.save(ann / f"{image_id}_aro.npy", np.array(rng.uniform(-1, 1)))
            np.save(ann / f"{image_id}_lnd.npy", rng.uniform(0, size, size=136))
            written[split].append(image_id)
    return written


@dataclass(frozen=True)
class FerRow:
    """One row of fer2013.csv + fer2013new.csv: Usage, FERPlus image name ("" = not exported), the ten
    vote counts in FERPLUS_COLUMNS order, and the original FER2013 emotion code."""

    usage: str
    name: str
    votes: tuple[int, ...]
    emotion: int = 0


def ferplus_votes(**counts: int) -> tuple[int, ...]:
    """Votes by column name, e.g. ferplus_votes(happiness=6, surprise=4)."""
    unknown = set(counts) - set(FERPLUS_COLUMNS)
    if unknown:
        raise ValueError(f"unknown FERPlus columns {sorted(unknown)}")
    return tuple(counts.get(c, 0) for c in FERPLUS_COLUMNS)


_FOLDERS = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}


def write_ferplus_replica(root: Path, rows: Sequence[FerRow], layout: str = "csv", seed: int = 0) -> Path:
    """FERPlus as distributed: `csv` writes fer2013.csv + fer2013new.csv (row-aligned); `folders` writes
    what microsoft/FERPlus generate_training_data.py exports (FER2013{Train,Valid,Test}/<name> 48x48
    grayscale PNGs, rows without a name skipped, a duplicated name overwritten by its later row) with a
    header-less label.csv per folder. Pixels of row i are the same in both layouts."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = [smooth_image(rng, 48, 48, channels=1) for _ in rows]
    if layout == "csv":
        with open(root / "fer2013.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["emotion", "pixels", "Usage"])
            for r, px in zip(rows, pixels):
                w.writerow([r.emotion, " ".join(str(int(v)) for v in px.ravel()), r.usage])
        with open(root / "fer2013new.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["Usage", "Image name", *FERPLUS_COLUMNS])
            for r in rows:
                w.writerow([r.usage, r.name, *r.votes])
        return root
    if layout != "folders":
        raise ValueError(f"layout {layout!r}: expected csv or folders")
    labels: dict[str, dict[str, tuple[int, ...]]] = {folder: {} for folder in _FOLDERS.values()}
    for r, px in zip(rows, pixels):
        if not r.name:
            continue
        folder = _FOLDERS[r.usage]
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(px, "L").save(root / folder / r.name)
        labels[folder][r.name] = r.votes  # dict order: first appearance; value: the later row, like the PNG
    for folder, entries in labels.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        with open(root / folder / "label.csv", "w", newline="") as f:
            w = csv.writer(f)
            for name, votes in entries.items():
                w.writerow([name, "(0, 0, 48, 48)", *votes])
    return root
