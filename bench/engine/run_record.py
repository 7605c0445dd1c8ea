"""The record of a finished run (`bench.results.record.Record`), from its set-up and its stages' results."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench.engine.provenance import git_commit, host_info, package_versions
from bench.engine.stage import RunSetup, StageResult
from bench.errors import FERBenchError
from bench.results.record import SCHEMA, Predictions, Record


def scored_stage(run: RunSetup, results: list[StageResult]) -> StageResult:
    """The stage the run's metrics come from: the last that evaluates a classifier."""
    scored = [r for r in results if r.stage.evaluate]
    if not scored:
        raise FERBenchError(f"method {run.cfg.method!r}: no stage evaluates a classifier, so the run has no result")
    return scored[-1]


def derived_metrics(history: list[dict[str, Any]]) -> dict[str, Any]:
    """What a record derives from its evaluations: the median of the last five, and the best-on-test (a flagged
    secondary number) with its step."""
    best = max(history, key=lambda h: h["accuracy"])
    return {"last5_median_accuracy": float(np.median([h["accuracy"] for h in history][-5:])),
            "best_accuracy": best["accuracy"], "best_step": best["step"]}


def build_record(run: RunSetup, results: list[StageResult], *, pretrained: dict[str, Any] | None = None,
                 predictions: Predictions | None = None, artifacts: dict[str, dict[str, Any]] | None = None,
                 fingerprint: dict[str, Any] | None = None) -> Record:
    """The run's record. Its metrics are those of the last stage that evaluates a classifier; iterations, times
    and throughput are the stages' together; `pretrained`: what `model.pretrained_file` loaded; `fingerprint`: the
    behaviour of the code that trained it (bench/engine/fingerprint.py)."""
    last = scored_stage(run, results)
    cfg, data, manifest, final = run.cfg, run.data.data, run.data.manifest, last.final_metrics
    sc = last.cfg.train  # batch sizes: the stage's the metrics come from
    train_time_s = round(sum(r.state.train_time_s for r in results), 3)
    images_per_s = round(sum(r.state.images_seen for r in results) / max(train_time_s, 1e-9), 1)
    acc = run.accelerator
    ds = acc.state.deepspeed_plugin
    record: Record = {
        "schema": SCHEMA,
        "run_id": run.run_id,
        "method": cfg.method,
        "recipe": cfg.recipe,  # the protocol: "harness" or a reference recipe
        "dataset": data.name,  # the dataset with a non-default label protocol in its name (ferplus-argmax7)
        "label_protocol": data.info.get("label_protocol"),
        "protocol": manifest["protocol"],
        "budget": manifest["budget"],
        "seed": cfg.seed,
        "split_seed": cfg.effective_split_seed,
        "class_names": list(data.class_names),
        "native_codes": data.info.get("native_codes"),  # canonical class -> the dataset's own label code
        "split": {
            "manifest_sha256": manifest["sha256"],
            # the dataset's identity, made of its content (ids, labels, pixels: bench/data/cache.py)
            "dataset_identity": manifest["dataset_fingerprint"],
            "identity": manifest.get("identity"),
            "manifest_file": str(run.data.manifest_path) if run.data.manifest_path else None,
            "n_labeled": manifest["n_labeled"],
            "n_unlabeled": len(run.data.unlabeled_pool),
            "per_class_labeled": manifest["per_class_labeled"],
        },
        "config": cfg.to_dict(),
        "method_hparams": run.method.hparams,
        "method_info": run.method.info(),
        "preset": cfg.preset,
        "backbone": cfg.model.backbone,
        "pretrained_file": cfg.model.pretrained_file,
        "image_size": cfg.data.image_size,
        "world_size": acc.num_processes,
        "iterations": sum(r.summary["iterations"] for r in results),
        "global_batch": {"labeled": sc.batch_size, "unlabeled": sc.mu * sc.batch_size if last.stage.views else 0},
        "metrics": {
            "final": {k: final[k] for k in ("accuracy", "mean_class_accuracy", "macro_f1", "per_class_recall",
                                            "confusion_matrix")},
            **derived_metrics(last.state.history),
            "n_test": len(data.test.ids),
        },
        "history": last.state.history,
        "curves": last.state.curves,
        "wall_time_s": round(sum(r.state.wall_time_s for r in results), 3),
        "train_time_s": train_time_s,
        "images_per_s": images_per_s,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "host": host_info(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "pretrained": pretrained,  # file, sha256, tensors loaded, missing and unexpected keys
        "sessions": last.state.sessions,  # where each process started and how many steps it ran
        "distributed": {"type": str(acc.distributed_type).split(".")[-1], "backend": acc.state.backend,
                        "zero_stage": ds.zero_stage if ds is not None else None,
                        # checkpoints at which all processes were checked to hold one method state
                        "method_state_checks": sum(r.state.state_checks for r in results)},
        "performance": {**last.summary["performance"], "images_per_s": images_per_s},
    }
    if len(results) > 1:
        record["stages"] = [r.summary for r in results]
    if predictions is not None:
        record["predictions"] = predictions
    if artifacts is not None:
        record["artifacts"] = artifacts
    if fingerprint is not None:
        record["fingerprint"] = fingerprint
    return record
