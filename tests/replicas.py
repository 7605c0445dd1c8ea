"""Faithful on-disk replicas of raw datasets for loader tests (reference/harness.md §2.5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _write_jpeg(path: Path, width: int, height: int, rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path, "JPEG", quality=80)


def write_rafdb_replica(root: Path, train_labels: list[int], test_labels: list[int], spelling: str = "patition",
                        fields: int = 2, size: int = 100) -> Path:
    """Write `root/basic` in the RAF-DB basic layout and return the `basic` path.

    Labels are RAF-DB native codes (1..7), one per image, named train_%05d / test_%04d from 1.
    `spelling` is "patition" (official) or "partition"; `fields` is 2 (`name label`) or 3
    (`name split label`). Aligned images are size x size; originals have a random size.
    """
    basic = Path(root) / "basic"
    (basic / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (basic / "Image" / "aligned").mkdir(parents=True, exist_ok=True)
    (basic / "Image" / "original").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for split, labels, width in (("train", train_labels, 5), ("test", test_labels, 4)):
        for i, label in enumerate(labels, start=1):
            stem = f"{split}_{i:0{width}d}"
            lines.append(f"{stem}.jpg {split} {label}" if fields == 3 else f"{stem}.jpg {label}")
            _write_jpeg(basic / "Image" / "aligned" / f"{stem}_aligned.jpg", size, size, rng)
            w, h = (int(v) for v in rng.integers(120, 240, size=2))
            _write_jpeg(basic / "Image" / "original" / f"{stem}.jpg", w, h, rng)
    (basic / "EmoLabel" / f"list_{spelling}_label.txt").write_text("\n".join(lines) + "\n")
    return basic
