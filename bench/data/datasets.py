"""Dataset registry: a name -> how to find its raw records and which classes it has.

Readers return `SampleRecord`s with canonical labels; nothing here knows about methods.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.data.labels import CANONICAL_CLASSES
from bench.data.records import SampleRecord
from bench.errors import FERBenchError


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    #: (root or None, options, cache_dir) -> records; root None only for generated datasets
    read: Callable[[str | None, dict[str, Any], Path], list[SampleRecord]]
    needs_root: bool = True
    description: str = ""

    @property
    def class_names(self) -> tuple[str, ...]:
        return CANONICAL_CLASSES[: self.num_classes]


_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    _DATASETS[spec.name] = spec
    return spec


def get_dataset(name: str) -> DatasetSpec:
    if name not in _DATASETS:
        raise FERBenchError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(_DATASETS))}")
    return _DATASETS[name]


def dataset_names() -> list[str]:
    return sorted(_DATASETS)


def _read_rafdb(root: str | None, options: dict[str, Any], cache_dir: Path) -> list[SampleRecord]:
    from bench.data.rafdb import read_rafdb

    if root is None:
        raise FERBenchError("dataset 'rafdb' needs its folder: pass --root PATH (or data.root=PATH)")
    if not Path(root).exists():
        raise FERBenchError(f"dataset root {root}: folder not found (expected the RAF-DB 'basic' folder)")
    return read_rafdb(root, images=options.get("images", "aligned"))


def _read_synthfer(root: str | None, options: dict[str, Any], cache_dir: Path) -> list[SampleRecord]:
    """Generated on first use into the cache (or read from `root`), always through the RAF-DB reader."""
    from bench.data.rafdb import read_rafdb
    from bench.data.synthfer import ensure_synthfer

    if root is not None:
        if not Path(root).exists():
            raise FERBenchError(f"dataset root {root}: folder not found (expected a synthfer RAF-DB layout)")
        return read_rafdb(root)
    workers = min(4, os.cpu_count() or 1)
    return read_rafdb(ensure_synthfer(cache_dir / "raw", workers=workers, progress=True, **options))


register_dataset(DatasetSpec("rafdb", 7, _read_rafdb, description="RAF-DB basic, 7 classes"))
register_dataset(
    DatasetSpec(
        "synthfer",
        7,
        _read_synthfer,
        needs_root=False,
        description="procedural face-expression images in the RAF-DB layout (embedded default)",
    )
)
