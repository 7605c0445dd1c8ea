"""`ferbench bench train METHOD [KEY=VALUE ...]`: images/s of training end to end against the pure-compute ceiling.

In one process, on synthfer generated locally: N steps of the method through the real engine (`StageRun.step`,
the trainer's own step: the feed of `data.augment_on`, then autocast + `training_step` + backward + optimiser + EMA
and the method's hooks), and N steps of the same model and step on random tensors already on the device (no data
path at all: the ceiling). The ratio end_to_end / ceiling says how much of the accelerator the data path leaves
unused. Also measured: the CPU path (`augment_on: cpu`, views made in DataLoader workers) and, on CUDA, the
CUDA-graph variant (`compile: reduce-overhead`). The run is any config (dotted overrides) on top of the benchmark's
defaults (`BENCH_DEFAULTS`). Prints a table; optionally writes JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.config import RunConfig, build_config, config_from_dict
from bench.data.datasets import get_dataset
from bench.engine.stage import RunSetup, StageRun, build_stage_model
from bench.engine.trainer import make_accelerator, set_up_run, validate
from bench.errors import FERBenchError
from bench.method import Batch

#: the benchmark's run, under the user's overrides: FixMatch's resnet18 at 112 px, B=128, mu=7, on 2,000 generated
#: synthfer images; bf16 and channels-last on CUDA
BENCH_DEFAULTS = {"model.backbone": "resnet18", "data.image_size": 112, "train.batch_size": 128, "train.mu": 7,
                  "data.synthfer": "{n_train: 2000, n_test: 70, seed: 0}"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _random_like(batch: Batch) -> Batch:
    """The batch's shapes as random images already on the device; labels and indices kept."""
    def rnd(group: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        if group is None:
            return None
        return {k: torch.randn_like(v) if v.is_floating_point() else v.clone() for k, v in group.items()}
    return Batch(rnd(batch.labeled), rnd(batch.unlabeled))


def _rate(step: Callable[[], Any], steps: int, warmup: int, images_per_step: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return images_per_step * steps / (time.perf_counter() - t0)


def bench_config(method: str, overrides: list[str], timed: int) -> RunConfig:
    """The benchmark's run config: its defaults, CUDA's speed settings, then `overrides`; long enough for `timed`
    steps twice (end to end, then the ceiling on the same model)."""
    cuda = torch.cuda.is_available()
    defaults = {**BENCH_DEFAULTS, "data.workers": max(1, (os.cpu_count() or 2) - 1),
                "train.channels_last": str(cuda).lower(), "train.mixed_precision": "bf16" if cuda else "no"}
    return build_config(overrides=[f"method={method}", *(f"{k}={v}" for k, v in defaults.items()), *overrides,
                                   f"train.iterations={2 * timed}"])


def _stage_setup(cfg: RunConfig, stage_name: str | None) -> tuple[RunSetup, int]:
    """The run's set-up as the trainer makes it, and the index of the stage to measure (default: the last)."""
    method_cls = validate(cfg)
    classes = get_dataset(cfg.data.name).num_classes_for(cfg.data.label_protocol)
    names = [st.name for st in method_cls(num_classes=classes, **cfg.method_args).stages()]
    if stage_name is not None and stage_name not in names:  # before any data is generated
        raise FERBenchError(f"bench train --stage {stage_name}: method {cfg.method!r} trains the stages "
                            f"{', '.join(names)}")
    run = set_up_run(cfg, make_accelerator(cfg), method_cls)
    stages = run.method.stages()
    return run, [st.name for st in stages].index(stage_name) if stage_name else len(stages) - 1


def _stage_run(run: RunSetup, index: int, augment_on: str, compile_mode: str) -> StageRun:
    """A fresh set-up of stage `index` on the path `augment_on`: each earlier stage's (untrained) model handed on,
    as a run builds them."""
    cfg = config_from_dict(run.cfg.to_dict())
    cfg.data.augment_on = augment_on
    variant = dataclasses.replace(run, cfg=cfg)
    stages = variant.method.stages()
    previous = None
    for st in stages[: index + 1]:
        previous, _ = build_stage_model(variant, st, previous)
    sr = StageRun(variant, stages[index], previous, compile_mode=compile_mode)
    sr.model.train()
    return sr


def run_train_benchmark(method: str = "fixmatch", overrides: list[str] | None = None, *, steps: int = 20,
                        warmup: int = 3, cpu_path: bool = True, json_path: str | None = None,
                        stage: str | None = None) -> dict[str, Any]:
    """Measure and print end-to-end vs ceiling images/s; returns (and optionally writes) the results."""
    from rich.console import Console

    if steps < 1 or warmup < 0:
        raise FERBenchError(f"bench train: expected --steps >= 1 and --warmup >= 0; got {steps} and {warmup}")
    cfg = bench_config(method, list(overrides or []), warmup + steps)
    if cfg.data.name != "synthfer" or cfg.data.synthfer.get("n_train", 14) < 14:
        raise FERBenchError("bench train: measures on synthfer with data.synthfer.n_train >= 14")
    run, index = _stage_setup(cfg, stage)
    cuda, device, console = torch.cuda.is_available(), run.accelerator.device, Console()
    measured: list[StageRun] = []

    def measure(aug: str, mode: str, ceiling: bool = True) -> dict[str, Any]:
        sr = _stage_run(run, index, aug, mode)
        measured.append(sr)
        with console.status(f"{aug} path, compile {mode}: {warmup} + {steps} steps"):
            e2e = _rate(sr.step, steps, warmup, sr.images_per_step, device)
            fixed = _random_like(sr.feed.batch(0)) if ceiling else None
            sr.feed.close()
            ceil = _rate(lambda: sr.step(fixed), steps, warmup, sr.images_per_step, device) if ceiling else None
        return {"augment_on": aug, "images_on": sr.feed.where, "workers": sr.cfg.data.workers if aug == "cpu" else 0,
                "compile": mode, "end_to_end_images_per_s": e2e, "ceiling_images_per_s": ceil,
                "ratio": e2e / ceil if ceil else None, "fused_optimizer": sr.fused[0],
                "fused_optimizer_note": sr.fused[1]}

    rows = [measure(cfg.data.augment_on, cfg.train.compile)]
    if cpu_path and cfg.data.augment_on != "cpu":  # the classic pipeline, against the same ceiling
        row = measure("cpu", cfg.train.compile, ceiling=False)
        row["ceiling_images_per_s"] = rows[0]["ceiling_images_per_s"]
        row["ratio"] = row["end_to_end_images_per_s"] / row["ceiling_images_per_s"]
        rows.append(row)
    if cuda and cfg.train.compile != "reduce-overhead":  # CUDA graphs: what launch-bound small batches gain
        rows.append(measure(cfg.data.augment_on, "reduce-overhead"))
    first = measured[0]
    head = rows[0]
    results = {
        "method": cfg.method, "stage": first.stage.name, "backbone": cfg.model.backbone,
        "image_size": cfg.data.image_size,
        "batch_size": first.cfg.train.batch_size, "mu": first.cfg.train.mu,  # the stage's own, as a run trains
        "images_per_step": first.images_per_step, "steps": steps, "warmup": warmup,
        "n_train": cfg.data.synthfer.get("n_train"), "device": str(device),
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "mixed_precision": cfg.train.mixed_precision, "channels_last": cfg.train.channels_last,
        "end_to_end_images_per_s": head["end_to_end_images_per_s"],
        "ceiling_images_per_s": head["ceiling_images_per_s"], "ratio": head["ratio"], "rows": rows,
    }
    console.print(_table(results))
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
    return results


def _table(results: dict[str, Any]) -> Any:
    from rich.table import Table

    r = results
    stage = "" if r["stage"] == "main" else f" (stage {r['stage']})"
    table = Table(title=f"{r['method']}{stage} {r['backbone']} {r['image_size']}px B={r['batch_size']} mu={r['mu']}: "
                        f"{r['images_per_step']} images/step on {r['device_name']} ({r['steps']} timed steps after "
                        f"{r['warmup']})")
    for col in ("data path", "images on", "compile", "end to end (img/s)", "ceiling (img/s)", "ratio"):
        table.add_column(col, justify="right")
    for row in r["rows"]:
        path = f"{row['augment_on']}" + (f" ({row['workers']} workers)" if row["augment_on"] == "cpu" else "")
        table.add_row(path, row["images_on"], row["compile"], f"{row['end_to_end_images_per_s']:,.0f}",
                      f"{row['ceiling_images_per_s']:,.0f}", f"{row['ratio']:.2f}")
    return table
