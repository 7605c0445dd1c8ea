"""Unlabeled images from any folders (e.g. extra face images for reconstruction pretraining).

Every image file under the folders (recursively, sorted) is decoded once, resized to the run's image
size, and cached as one .npy array keyed by the files' names, sizes and mtimes, so a second run reuses it
and a changed folder is decoded again.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.data.cache import decode_records, default_workers, source_fingerprint
from bench.data.records import SampleRecord
from bench.errors import FERBenchError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def image_files(folders: list[str] | tuple[str, ...]) -> list[Path]:
    """The image files under `folders`; a missing folder or one without images is an error."""
    files: list[Path] = []
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise FERBenchError(f"image folder {root}: folder not found")
        found = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise FERBenchError(f"image folder {root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files += found
    return files


def load_image_folders(folders: list[str] | tuple[str, ...], size: int, cache_dir: Path,
                       progress: bool = False) -> np.ndarray:
    """(N, size, size, 3) uint8 images of every file under `folders`; an unreadable file is an error
    naming it, and nothing is cached then."""
    files = image_files(folders)
    records = [SampleRecord(id=str(p), path=str(p), label=-1, native_label=-1, split="train") for p in files]
    cache = Path(cache_dir) / "imagefolders" / f"{source_fingerprint(records, size)[:20]}.npy"
    if cache.is_file():
        return np.load(cache)
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    decoded = decode_records(records, size, default_workers())
    for i, img in enumerate(tqdm(decoded, total=len(files), desc="decode image folders", unit="img",
                                 disable=not progress)):
        if isinstance(img, str):
            raise FERBenchError(f"{files[i]}: unreadable image ({img})")
        out[i] = img
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, out)
    os.replace(tmp, cache)
    return out
