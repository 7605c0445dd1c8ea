"""What `ferbench data verify` and `ferbench data stats` look at: a dataset's records, per-class counts,
what the label protocol dropped, and (verify) every entry that is wrong. Nothing here writes files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.data.cache import decode_records, default_cache_dir, default_workers
from bench.data.datasets import DatasetSpec, get_dataset
from bench.data.records import Problem, ReadReport, SampleRecord

SPLITS = ("train", "test")


@dataclass
class DatasetSurvey:
    spec: DatasetSpec
    label_protocol: str
    records: list[SampleRecord]
    report: ReadReport

    @property
    def key(self) -> str:
        return self.spec.key(self.label_protocol)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names_for(self.label_protocol)

    def counts(self) -> dict[str, list[int]]:
        """split -> images per canonical class."""
        out = {s: [0] * len(self.class_names) for s in SPLITS}
        for r in self.records:
            out[r.split][r.label] += 1
        return out

    def native_codes(self) -> dict[int, int]:
        """canonical class -> the dataset's own code for it."""
        return self.spec.native_codes(self.label_protocol)


def survey(name: str, root: str | None, label_protocol: str | None = None, options: dict[str, Any] | None = None,
           cache_dir: str | None = None, strict: bool = True) -> DatasetSurvey:
    """Read a dataset's label files; with strict=False every bad entry is collected instead of raised."""
    spec = get_dataset(name)
    protocol = spec.protocol(label_protocol)
    report = ReadReport(strict=strict)
    records = spec.read_records(root, protocol, options, default_cache_dir(cache_dir), report)
    return DatasetSurvey(spec, protocol, records, report)


def check_images(records: list[SampleRecord], workers: int | None = None, progress: bool = False) -> list[Problem]:
    """A `missing` or `unreadable` problem for every image that does not decode."""
    workers = workers if workers is not None else default_workers()
    it = decode_records(records, 16, workers)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=len(records), desc="decode", unit="img")
    problems = []
    for r, out in zip(records, it):
        if isinstance(out, str):
            missing = out.startswith("FileNotFoundError") and not Path(r.path).exists()
            problems.append(Problem("missing" if missing else "unreadable", r.path,
                                    "image file not found" if missing else f"cannot decode ({out})"))
    return problems
