"""Dataset registry: a name -> how to read its raw records, its label protocols and reader options.

Readers return `SampleRecord`s with canonical labels; nothing here knows about methods. A dataset may
offer several label protocols (FERPlus: `majority8`, `argmax7`); the first is its default, and a
non-default one is part of the dataset's name in records and leaderboards (`ferplus-argmax7`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.data.labels import (
    AFFECTNET_TO_CANONICAL,
    CANONICAL_CLASSES,
    FERPLUS_TO_CANONICAL,
    RAFDB_TO_CANONICAL,
)
from bench.data.records import ReadReport, SampleRecord
from bench.errors import FERBenchError

#: (root or None, label protocol, resolved options, cache_dir, report) -> records
Reader = Callable[[str | None, str, dict[str, Any], Path, ReadReport], list[SampleRecord]]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    read: Reader
    #: label protocol -> number of classes it keeps (canonical 0..n-1); the first is the default
    label_protocols: dict[str, int]
    #: reader options and their defaults (type-checked against the default's type); None: the reader
    #: checks its own (synthfer's generator parameters)
    options: dict[str, Any] | None = field(default_factory=dict)
    needs_root: bool = True
    description: str = ""
    layout: str = ""  # what `--root` must point at, for error messages and `ferbench data`
    #: the dataset's own label code -> canonical class (docs/guides/datasets.md#canonical-label-space)
    label_map: dict[int, int] = field(default_factory=dict)

    def native_codes(self, label_protocol: str | None = None) -> dict[int, int]:
        """canonical class -> the dataset's own code, for the classes the protocol keeps."""
        n = self.num_classes_for(label_protocol)
        return {c: code for code, c in self.label_map.items() if c < n}

    @property
    def default_protocol(self) -> str:
        return next(iter(self.label_protocols))

    def protocol(self, label_protocol: str | None) -> str:
        p = label_protocol or self.default_protocol
        if p not in self.label_protocols:
            raise FERBenchError(f"dataset {self.name!r}: unknown label protocol {p!r}; known: "
                                f"{', '.join(self.label_protocols)}")
        return p

    def num_classes_for(self, label_protocol: str | None = None) -> int:
        return self.label_protocols[self.protocol(label_protocol)]

    @property
    def num_classes(self) -> int:
        return self.num_classes_for(None)

    def class_names_for(self, label_protocol: str | None = None) -> tuple[str, ...]:
        return CANONICAL_CLASSES[: self.num_classes_for(label_protocol)]

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.class_names_for(None)

    def key(self, label_protocol: str | None = None) -> str:
        """The dataset's name in run records and leaderboards."""
        p = self.protocol(label_protocol)
        return self.name if p == self.default_protocol else f"{self.name}-{p}"

    def resolve_options(self, options: dict[str, Any] | None) -> dict[str, Any]:
        options = dict(options or {})
        if self.options is None:
            return options
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            accepted = ", ".join(sorted(self.options)) or "none"
            raise FERBenchError(f"dataset {self.name!r}: unknown option(s) {', '.join(unknown)}; accepted: {accepted}")
        for k, v in options.items():
            default = self.options[k]
            wrong_bool = isinstance(default, bool) != isinstance(v, bool)
            if wrong_bool or (isinstance(default, str) and not isinstance(v, str)):
                raise FERBenchError(f"dataset {self.name!r}: option {k}={v!r} should be a {type(default).__name__}")
        return {**self.options, **options}

    def check_root(self, root: str | None) -> None:
        """A FERBenchError unless `root` is an existing folder (for datasets read from disk)."""
        if self.needs_root:
            if root is None:
                raise FERBenchError(f"dataset {self.name!r} needs its folder: pass --root PATH (or data.root=PATH); "
                                    f"expected {self.layout}")
            if not Path(root).is_dir():
                raise FERBenchError(f"dataset root {root}: folder not found (expected {self.layout})")

    def read_records(self, root: str | None, label_protocol: str | None = None, options: dict[str, Any] | None = None,
                     cache_dir: Path | None = None, report: ReadReport | None = None) -> list[SampleRecord]:
        """Records (canonical labels) of the dataset under a label protocol; problems go to `report`."""
        report = report if report is not None else ReadReport()
        self.check_root(root)
        return self.read(root, self.protocol(label_protocol), self.resolve_options(options),
                         Path(cache_dir or "."), report)


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


def _read_rafdb(root: str | None, protocol: str, options: dict[str, Any], cache_dir: Path,
                report: ReadReport) -> list[SampleRecord]:
    from bench.data.rafdb import read_rafdb

    return read_rafdb(root, images=options["images"], report=report)


def _read_synthfer(root: str | None, protocol: str, options: dict[str, Any], cache_dir: Path,
                   report: ReadReport) -> list[SampleRecord]:
    """Generated on first use into the cache (or read from `root`), always through the RAF-DB reader."""
    from bench.data.rafdb import read_rafdb
    from bench.data.synthfer import ensure_synthfer

    if root is not None:
        if not Path(root).exists():
            raise FERBenchError(f"dataset root {root}: folder not found (expected a synthfer RAF-DB layout)")
        return read_rafdb(root, report=report)
    workers = min(4, os.cpu_count() or 1)
    return read_rafdb(ensure_synthfer(cache_dir / "raw", workers=workers, progress=True, **options), report=report)


def _affectnet_reader(num_classes: int) -> Reader:
    def read(root: str | None, protocol: str, options: dict[str, Any], cache_dir: Path,
             report: ReadReport) -> list[SampleRecord]:
        from bench.data.affectnet import read_affectnet

        return read_affectnet(root, num_classes, layout=options["layout"], report=report)

    return read


def _read_ferplus(root: str | None, protocol: str, options: dict[str, Any], cache_dir: Path,
                  report: ReadReport) -> list[SampleRecord]:
    from bench.data.ferplus import read_ferplus

    return read_ferplus(root, protocol, layout=options["layout"], train_with_valid=options["train_with_valid"],
                        report=report)


_AFFECTNET_LAYOUT = ("the AffectNet folder holding Manually_Annotated_file_lists/ + Manually_Annotated_Images/, "
                     "or train_set/ + val_set/")
register_dataset(DatasetSpec("rafdb", _read_rafdb, {"basic": 7}, {"images": "aligned"},
                             description="RAF-DB basic, 7 classes; images: aligned (100x100) or original",
                             layout="the RAF-DB 'basic' folder (EmoLabel/, Image/) or its parent",
                             label_map=RAFDB_TO_CANONICAL))
register_dataset(DatasetSpec("affectnet7", _affectnet_reader(7), {"expression7": 7}, {"layout": "auto"},
                             description="AffectNet, 7 classes (codes 0-6); validation set as test",
                             layout=_AFFECTNET_LAYOUT, label_map=AFFECTNET_TO_CANONICAL))
register_dataset(DatasetSpec("affectnet8", _affectnet_reader(8), {"expression8": 8}, {"layout": "auto"},
                             description="AffectNet, 8 classes (codes 0-7); validation set as test",
                             layout=_AFFECTNET_LAYOUT, label_map=AFFECTNET_TO_CANONICAL))
register_dataset(DatasetSpec("ferplus", _read_ferplus, {"majority8": 8, "argmax7": 7},
                             {"layout": "auto", "train_with_valid": False},
                             description="FERPlus votes over FER2013; train FER2013Train (+Valid), test FER2013Test",
                             layout="the folder holding fer2013.csv + fer2013new.csv, or FER2013Train/ "
                                    "FER2013Valid/ FER2013Test/ with label.csv",
                             label_map=FERPLUS_TO_CANONICAL))
register_dataset(DatasetSpec("synthfer", _read_synthfer, {"basic": 7}, None, needs_root=False,
                             description="procedural face-expression images in the RAF-DB layout (embedded default)",
                             layout="a synthfer RAF-DB layout", label_map=RAFDB_TO_CANONICAL))
