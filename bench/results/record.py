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
      "predictions": {"file": str, "sha256": str, "n": int, "test_ids_sha256": str},
                                           # per-test-image targets and predictions of the final model,
                                           # `<run_id>.<sha12>.predictions.npy` next to the record
      "pretrained": {...} | null,          # what model.pretrained_file loaded (bench/engine/pretrained.py)
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


def write_predictions(record_file: Path, predictions: list[int], targets: Any, test_ids: Any,
                      groups: Any = None) -> dict[str, Any]:
    """Write the final model's per-test-image predictions next to `record_file`, as an int16 `.npy` array (2, N):
    row 0 the test targets, row 1 the predictions, in the test split's order. A dataset whose test images come in
    groups that are not independent (several images of one subject or video) passes an integer group id per image
    in `groups`: it becomes row 2 (the array is then int32, (3, N)), and the leaderboards' intervals resample
    the groups instead of the images. The file is named by the run id
    and the first 12 hex of its sha256, so a duplicate job of the run never replaces the file another job's
    record names (`.npy`, not `.npz`: its bytes depend only on the array). Returns the record's reference to it:
    file name, sha256, N, and the sha256 of the test ids (whether two runs saw the same images in one order)."""
    import hashlib
    import io

    import numpy as np

    rows = [targets, predictions] + ([] if groups is None else [groups])
    if groups is not None and len(groups) != len(predictions):
        raise FERBenchError(f"{record_file}: {len(groups)} group ids for {len(predictions)} test predictions")
    buf = io.BytesIO()
    np.save(buf, np.stack([np.asarray(r, dtype=np.int16 if groups is None else np.int32) for r in rows]),
            allow_pickle=False)
    blob = buf.getvalue()
    sha = hashlib.sha256(blob).hexdigest()
    path = record_file.with_name(f"{record_file.name.removesuffix('.json')}.{sha[:12]}.predictions.npy")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    os.replace(tmp, path)
    ids = hashlib.sha256("\n".join(str(i) for i in test_ids).encode()).hexdigest()
    return {"file": path.name, "sha256": sha, "n": len(predictions), "test_ids_sha256": ids}


def read_predictions(record_file: Path, record: dict) -> Any:
    """The (2, N) targets/predictions array a record references ((3, N) with group ids), checked against its
    sha256; None when the record has none (written before predictions were kept)."""
    import hashlib

    import numpy as np

    ref = record.get("predictions")
    if not isinstance(ref, dict):
        return None
    path = Path(record_file).with_name(str(ref.get("file")))
    if not path.is_file():
        raise FERBenchError(f"{record_file}: its predictions file {path.name} is missing")
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != ref.get("sha256"):
        raise FERBenchError(f"{path}: sha256 does not match the record's; the file was changed after the run")
    array = np.load(path, allow_pickle=False)
    if array.ndim != 2 or array.shape[0] not in (2, 3) or array.shape[1] != ref.get("n"):
        raise FERBenchError(f"{path}: expected a (2, {ref.get('n')}) array of targets and predictions (or (3, "
                            f"{ref.get('n')}) with group ids), got shape {array.shape}")
    return array


def load_with_predictions(records_dir: str | Path) -> tuple[list[dict], dict[str, Any]]:
    """Every run record under `records_dir` and, by run id, the predictions arrays they reference (checked)."""
    if not Path(records_dir).is_dir():
        raise FERBenchError(f"{records_dir}: records folder not found")
    files = load_record_files(records_dir)
    if not files:
        raise FERBenchError(f"{records_dir}: no run records found")
    predictions = {rec["run_id"]: a for path, rec in files if (a := read_predictions(path, rec)) is not None}
    return [rec for _, rec in files], predictions


def record_path(records_dir: str | Path, run_id: str) -> Path:
    return Path(records_dir) / f"{run_id}.json"


def load_records(records_dir: str | Path) -> list[dict]:
    """All run records under `records_dir` (recursively), sorted by run id."""
    return [rec for _, rec in load_record_files(records_dir)]


def load_record_files(records_dir: str | Path) -> list[tuple[Path, dict]]:
    """(path, record) of every run record under `records_dir` (recursively), sorted by run id."""
    out = []
    for p in sorted(Path(records_dir).rglob("*.json")):
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise FERBenchError(f"{p}: not valid JSON ({e.msg} at line {e.lineno}); expected a run record") from e
        if isinstance(data, dict) and data.get("schema") == SCHEMA:
            out.append((p, data))
    return sorted(out, key=lambda pr: pr[1]["run_id"])
