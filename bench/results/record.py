"""Run records: one JSON file per run, written atomically, named by its run id.

Schema ("ferbench.record/1"); accuracies are fractions in [0, 1]:

    {
      "schema": "ferbench.record/1",
      "run_id": str,                       # "<method>_<dataset>_<protocol><budget>_s<seed>_<hash10>"
      "method": str, "dataset": str, "protocol": str, "budget": float,
      "seed": int, "split_seed": int,
      "class_names": [str, ...],           # index = label index used in metrics
      "split": {"manifest_sha256": str, "n_labeled": int, "n_unlabeled": int,
                "per_class_labeled": [int, ...]},
      "config": {...},                     # the resolved run config (bench.config)
      "method_hparams": {...}, "method_info": {...},  # arguments; facts such as the text encoder loaded
      "preset": str | null,
      "backbone": str, "image_size": int,
      "world_size": int, "iterations": int,
      "global_batch": {"labeled": int, "unlabeled": int},
      "metrics": {
        "final": {"accuracy": float, "mean_class_accuracy": float, "macro_f1": float,
                  "per_class_recall": [float, ...], "confusion_matrix": [[int, ...], ...]},
        "last5_median_accuracy": float,
        "best_accuracy": float, "best_step": int,   # best-on-test: secondary, flagged
        "n_test": int
      },
      "history": [{"step": int, "accuracy": float, "mean_class_accuracy": float,
                   "macro_f1": float}, ...],       # every evaluation
      "curves": [{"step": int, "loss": float, "mask_rate": float | absent, ...}, ...],
      "stages": [...],                     # optional, per-stage metrics for multi-stage methods
      "wall_time_s": float, "images_per_s": float,
      "versions": {"ferbench": str, "torch": str, ...}, "git_commit": str | null,
      "host": {"platform": str, "cpus": int, "device": str},
      "created_utc": str
    }
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.errors import FERBenchError

SCHEMA = "ferbench.record/1"


def write_json_atomic(path: str | Path, payload: Any, overwrite: bool = True) -> bool:
    """Write JSON to `path` via a temp file in the same folder and an atomic rename (or link).

    A reader never sees a half-written file, and two writers of the same path leave one whole file.
    With overwrite=False an existing file is kept (the first writer wins, whatever the timing: the
    file appears through a hard link, which fails if the name exists); returns whether this call wrote.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def record_path(records_dir: str | Path, run_id: str) -> Path:
    return Path(records_dir) / f"{run_id}.json"


def load_records(records_dir: str | Path) -> list[dict]:
    """All run records under `records_dir` (recursively), sorted by run id."""
    out = []
    for p in sorted(Path(records_dir).rglob("*.json")):
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise FERBenchError(f"{p}: not valid JSON ({e.msg} at line {e.lineno}); expected a run record") from e
        if isinstance(data, dict) and data.get("schema") == SCHEMA:
            out.append(data)
    return sorted(out, key=lambda r: r["run_id"])
