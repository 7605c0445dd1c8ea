"""What a raw-format reader yields: `SampleRecord`s before decoding, and a report of what it left out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.errors import FERBenchError


@dataclass(frozen=True)
class SampleRecord:
    """One image of a raw dataset, as found on disk.

    id: stable unique id within the dataset (e.g. RAF-DB "train_00001").
    path: absolute path of the image file, or of the file that holds `pixels`.
    label: canonical label index (bench.data.labels.CANONICAL_CLASSES).
    native_label: the dataset's own code for the class, as written in its label file.
    split: "train" or "test".
    box: optional face box (x0, y0, x1, y1) in pixels of the image at `path`.
    pixels: the image itself when the format stores pixels inline (fer2013.csv), else None.
    """

    id: str
    path: str
    label: int
    native_label: int
    split: str
    box: tuple[float, float, float, float] | None = None
    pixels: np.ndarray | None = field(default=None, compare=False, repr=False)  # the path/id identify it


@dataclass(frozen=True)
class Problem:
    kind: str  # "missing" | "unreadable" | "mislabelled" | "malformed"
    where: str  # file[:line] the problem is in
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class ReadReport:
    """A reader's findings besides the records.

    dropped: (split, reason) -> number of entries the label protocol leaves out (e.g. AffectNet code 8
    "None", a FERPlus image whose majority is unknown). These are not errors.
    problems: entries that are wrong (a malformed line, an unparseable label file). In strict mode the
    first one raises a FERBenchError; `ferbench data verify` collects them all.
    """

    strict: bool = True
    dropped: Counter = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def problem(self, kind: str, where: str, message: str) -> None:
        p = Problem(kind, where, message)
        if self.strict:
            raise FERBenchError(str(p))
        self.problems.append(p)

    def drop(self, split: str, reason: str) -> None:
        self.dropped[(split, reason)] += 1


def resolve_layout(dataset: str, root: Path, layout: str, layouts: Sequence[str],
                   detect: Callable[[Path], str]) -> str:
    """The layout a reader reads: `layout` itself, or `detect(root)` for "auto"; a FERBenchError for a name not in
    `layouts`. (One rule for the readers of datasets distributed in several layouts: AffectNet, FERPlus.)"""
    if layout not in layouts:
        raise FERBenchError(f"{dataset} layout={layout!r}: expected one of {', '.join(layouts)}")
    return detect(root) if layout == "auto" else layout
