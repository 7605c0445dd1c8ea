"""What a raw-format reader yields: one `SampleRecord` per image, before decoding."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SampleRecord:
    """One image of a raw dataset, as found on disk.

    id: stable unique id within the dataset (e.g. RAF-DB "train_00001").
    path: absolute path of the image file.
    label: canonical label index (bench.data.labels.CANONICAL_CLASSES).
    native_label: the dataset's own code for the class, as written in its label file.
    split: "train" or "test".
    box: optional face box (x0, y0, x1, y1) in pixels of the image at `path`.
    """

    id: str
    path: str
    label: int
    native_label: int
    split: str
    box: tuple[float, float, float, float] | None = None
