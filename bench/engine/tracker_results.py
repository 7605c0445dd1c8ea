"""What a run tells its trackers beyond the logged curves: at the start, who it is (the values that name it, the
same in every session, and the facts of this session: commit and host); at the end, its final metrics, per-class
recall, its confusion-matrix figure and its record file. Each tracker takes them in its own terms; the guard of
bench/engine/trackers.py contains any failure."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.engine.trackers import GuardedTracker


def run_values(run_id: str, recipe: str, manifest: dict[str, Any], fingerprint: dict[str, Any] | None,
               config: dict[str, Any]) -> dict[str, Any]:
    """The values that name the run and never change between its sessions: its run id, protocol, split manifest,
    fingerprint, and `config`, the flattened config keys that take part in the run id."""
    fingerprint = fingerprint or {}
    return {"ferbench.run_id": run_id, "ferbench.recipe": recipe, "ferbench.protocol": manifest["protocol"],
            "ferbench.budget": manifest["budget"],
            "ferbench.split_manifest_sha256": manifest["sha256"],
            "ferbench.fingerprint": fingerprint.get("digest") or f"unavailable: {fingerprint.get('unavailable')}",
            **{f"config.{k}": v for k, v in config.items()}}


def final_values(record: dict[str, Any]) -> dict[str, float]:
    """The final metrics and each class's recall, as trackers show numbers."""
    final = record["metrics"]["final"]
    out = {f"final/{k}": float(final[k]) for k in ("accuracy", "mean_class_accuracy", "macro_f1")}
    out |= {f"final/recall/{c}": float(r) for c, r in zip(record["class_names"], final["per_class_recall"])}
    out["final/best_on_test_accuracy"] = float(record["metrics"]["best_accuracy"])
    return out


# ---- the session's facts, each tracker in its own terms ---------------------------------------------------------

def _session_tensorboard(t: Any, facts: dict[str, str]) -> None:
    t.writer.add_text("session", json.dumps(facts, sort_keys=True))


def _session_wandb(t: Any, facts: dict[str, str]) -> None:
    t.run.config.update(facts, allow_val_change=True)  # a requeued session may run another commit, on another host


def _session_mlflow(t: Any, facts: dict[str, str]) -> None:
    import mlflow

    mlflow.set_tags(facts)  # tags may change between sessions; MLflow's params may not


SESSION: dict[str, Callable[[Any, dict[str, str]], None]] = {
    "tensorboard": _session_tensorboard, "wandb": _session_wandb, "mlflow": _session_mlflow}


# ---- the results of a finished run ------------------------------------------------------------------------------

def _results_tensorboard(t: Any, values: dict[str, float], figure: Path, step: int) -> None:
    from PIL import Image

    for key, value in values.items():
        t.writer.add_scalar(key, value, step)
    t.writer.add_image("final/confusion", np.asarray(Image.open(figure).convert("RGB")), step, dataformats="HWC")
    t.writer.flush()


def _results_wandb(t: Any, values: dict[str, float], figure: Path, step: int) -> None:
    import wandb

    t.run.summary.update(values)
    t.run.summary["final/confusion"] = wandb.Image(str(figure))


def _results_mlflow(t: Any, values: dict[str, float], figure: Path, step: int) -> None:
    import mlflow

    mlflow.log_metrics(values, step=step)
    mlflow.log_artifact(str(figure))


RESULTS: dict[str, Callable[[Any, dict[str, float], Path, int], None]] = {
    "tensorboard": _results_tensorboard, "wandb": _results_wandb, "mlflow": _results_mlflow}


def _record_wandb(t: Any, path: Path) -> None:
    t.run.save(str(path), base_path=str(path.parent), policy="now")


def _record_mlflow(t: Any, path: Path) -> None:
    import mlflow

    mlflow.log_artifact(str(path))


#: trackers that keep files take the record itself (TensorBoard's event files hold numbers and pictures only)
RECORD_FILE: dict[str, Callable[[Any, Path], None]] = {"wandb": _record_wandb, "mlflow": _record_mlflow}


def tell_session(trackers: list[GuardedTracker], facts: dict[str, str]) -> None:
    for t in trackers:
        t.guarded("noting the session", lambda t=t: SESSION[t.name](t.inner, facts))


def tell_results(trackers: list[GuardedTracker], record: dict[str, Any], figure: Path) -> None:
    values, step = final_values(record), int(record["iterations"])
    for t in trackers:
        t.guarded("the final results", lambda t=t: RESULTS[t.name](t.inner, values, figure, step))


def hand_over_record(trackers: list[GuardedTracker], path: Path) -> None:
    for t in trackers:
        if t.name in RECORD_FILE:
            t.guarded("the record file", lambda t=t: RECORD_FILE[t.name](t.inner, path))
