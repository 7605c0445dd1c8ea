"""`ferbench bench train METHOD`: images/s of training end to end against the pure-compute ceiling.

In one process, on synthfer generated locally: N steps of the method through the real engine (the feed of
`data.augment_on`, then autocast + `training_step` + backward + optimiser + EMA, as the training loop does
them), and N steps of the same model and training step on random tensors already on the device (no data
path at all: the ceiling). The ratio end_to_end / ceiling says how much of the accelerator the data path
leaves unused. Also measured: the CPU path (`augment_on: cpu`, views made in DataLoader workers) and, on
CUDA, the CUDA-graph variant (`compile: reduce-overhead`). Prints a table; optionally writes JSON.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from bench.config import RunConfig, build_config, config_from_dict
from bench.data.datasets import get_dataset
from bench.engine.model import build_model
from bench.engine.streams import step_seed
from bench.engine.trainer import (
    StageSetup,
    images_per_step,
    optimisation_step,
    prepare_run_data,
    setup_stage,
    stage_config,
    stage_run_data,
    validate,
)
from bench.errors import FERBenchError
from bench.method import Batch, SetupInfo, StepContext
from bench.registry import create_method, get_method_class


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Setup:
    """A run's data, method and stage set-up for one config, exactly as the trainer builds them (the trainer's
    `prepare_run_data`, `stage_config`, `Method.stage_model` over the stages before, `setup_stage`), without
    checkpoints, evaluation or record."""

    def __init__(self, cfg: RunConfig, accelerator: Accelerator, stage_name: str | None) -> None:
        self.acc, self.device = accelerator, accelerator.device
        self.run = prepare_run_data(cfg, accelerator, get_method_class(cfg.method))  # the trainer's data set-up
        self.num_classes = self.run.data.num_classes
        self.method = create_method(cfg.method, self.num_classes, cfg.method_args)
        self.method.setup(SetupInfo(self.num_classes, len(self.run.labeled_pool), len(self.run.unlabeled_pool),
                                    cfg.train.iterations))
        stages = self.method.stages()
        names = [st.name for st in stages]
        index = names.index(stage_name) if stage_name is not None else len(stages) - 1  # default: the last
        self.before, self.stage = stages[:index], stages[index]
        self.cfg = stage_config(cfg, self.stage)
        self.stage_run = stage_run_data(self.cfg, self.stage, self.run, accelerator)
        self.images_per_step = images_per_step(self.cfg, self.stage)

    def _model(self, cfg: RunConfig) -> torch.nn.Module:
        """The stage's model as a run builds it: each earlier stage's (untrained) model handed on."""
        previous = None
        for st in (*self.before, self.stage):
            torch.manual_seed(step_seed(cfg.seed, -1, 0, "init" if st.name == "main" else f"init:{st.name}"))
            previous = self.method.stage_model(st, build_model(cfg.model, self.num_classes), previous)
        return previous

    def model(self, compile_mode: str, augment_on: str) -> tuple[Callable[[Batch, int], None], StageSetup]:
        """A fresh set-up of the stage (model, optimiser, EMA, feed of `augment_on`) and the loop's step on it."""
        cfg = config_from_dict(self.cfg.to_dict())
        cfg.data.augment_on = augment_on
        s = setup_stage(self.acc, cfg, self.stage, self.method, self._model(cfg), self.stage_run, compile_mode)
        s.model.train()

        def step_fn(batch: Batch, step: int) -> None:  # the training loop's body, minus logging and evaluation
            torch.manual_seed(step_seed(cfg.seed, step, 0, "dropout"))
            ctx = StepContext(step=step, total_steps=cfg.train.iterations, num_classes=self.num_classes,
                              ema_model=s.ema.module if s.ema is not None else None, stage=self.stage.name,
                              denormalize=s.views.denormalize)
            optimisation_step(self.acc, self.method, s.model, s.optimizer, s.ema, batch, ctx)
            s.scheduler.step()

        return step_fn, s


def _random_like(batch: Batch) -> Batch:
    """The batch's shapes as random images already on the device; labels and indices kept."""
    def rnd(group: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        if group is None:
            return None
        return {k: torch.randn_like(v) if v.is_floating_point() else v.clone() for k, v in group.items()}
    return Batch(rnd(batch.labeled), rnd(batch.unlabeled))


def _rate(step_fn: Callable[[Batch, int], None], get: Callable[[int], Batch], steps: int, warmup: int,
          images_per_step: int, device: torch.device) -> float:
    for s in range(warmup):
        step_fn(get(s), s)
    _sync(device)
    t0 = time.perf_counter()
    for s in range(warmup, warmup + steps):
        step_fn(get(s), s)
    _sync(device)
    return images_per_step * steps / (time.perf_counter() - t0)


def run_train_benchmark(method: str = "fixmatch", steps: int = 20, warmup: int = 3, image_size: int = 112,
                        batch_size: int = 128, mu: int = 7, backbone: str = "resnet18", augment_on: str = "device",
                        compile_mode: str = "none", channels_last: bool | None = None,
                        mixed_precision: str | None = None, workers: int | None = None, n_train: int = 2000,
                        cache_dir: str | None = None, cpu_path: bool = True, json_path: str | None = None,
                        stage: str | None = None) -> dict[str, Any]:
    """Measure and print end-to-end vs ceiling images/s; returns (and optionally writes) the results."""
    from rich.console import Console
    from rich.table import Table

    if steps < 1 or warmup < 0 or n_train < 14:
        raise FERBenchError(f"bench train: expected --steps >= 1, --warmup >= 0, --n-train >= 14; got {steps}, "
                            f"{warmup}, {n_train}")
    cuda = torch.cuda.is_available()
    workers = max(1, (os.cpu_count() or 2) - 1) if workers is None else workers
    cfg = build_config(overrides=[
        f"method={method}", f"model.backbone={backbone}", f"data.image_size={image_size}",
        f"data.synthfer={{n_train: {n_train}, n_test: 70, seed: 0}}", f"data.augment_on={augment_on}",
        f"data.workers={workers}", f"train.batch_size={batch_size}", f"train.mu={mu}",
        f"train.iterations={warmup + steps}", f"train.compile={compile_mode}",
        f"train.channels_last={str(cuda if channels_last is None else channels_last).lower()}",
        f"train.mixed_precision={mixed_precision or ('bf16' if cuda else 'no')}",
        *([f"data.cache_dir={cache_dir}"] if cache_dir else [])])
    method_cls = validate(cfg)
    classes = get_dataset(cfg.data.name).num_classes_for(cfg.data.label_protocol)
    names = [st.name for st in method_cls(num_classes=classes, **cfg.method_args).stages()]
    if stage is not None and stage not in names:  # before any data is generated
        raise FERBenchError(f"bench train --stage {stage}: method {method!r} trains the stages {', '.join(names)}")
    console = Console()
    acc = Accelerator(cpu=not cuda, mixed_precision=cfg.train.mixed_precision)
    setup = _Setup(cfg, acc, stage)
    ips = setup.images_per_step

    def measure(aug: str, mode: str, ceiling: bool = True) -> dict[str, Any]:
        step_fn, built = setup.model(mode, aug)
        feed = built.feed
        fused = {"fused_optimizer": built.fused[0], "fused_optimizer_note": built.fused[1]}
        with console.status(f"{aug} path, compile {mode}: {warmup} + {steps} steps"):
            e2e = _rate(step_fn, feed.batch, steps, warmup, ips, setup.device)
            fixed = _random_like(feed.batch(0)) if ceiling else None
            feed.close()
            ceil = _rate(step_fn, lambda s: fixed, steps, warmup, ips, setup.device) if ceiling else None
        row = {"augment_on": aug, "images_on": feed.where, "workers": workers if aug == "cpu" else 0,
               "compile": mode, "end_to_end_images_per_s": e2e, "ceiling_images_per_s": ceil,
               "ratio": e2e / ceil if ceil else None, **fused}
        return row

    rows = [measure(augment_on, compile_mode)]
    if cpu_path and augment_on != "cpu":  # the classic pipeline, against the same ceiling
        row = measure("cpu", compile_mode, ceiling=False)
        row["ceiling_images_per_s"] = rows[0]["ceiling_images_per_s"]
        row["ratio"] = row["end_to_end_images_per_s"] / row["ceiling_images_per_s"]
        rows.append(row)
    if cuda and compile_mode != "reduce-overhead":  # CUDA graphs: what launch-bound small batches gain
        rows.append(measure(augment_on, "reduce-overhead"))

    head = rows[0]
    results = {
        "method": method, "stage": setup.stage.name, "backbone": backbone, "image_size": image_size,
        "batch_size": setup.cfg.train.batch_size, "mu": setup.cfg.train.mu,  # the stage's own, as a run trains
        "images_per_step": ips, "steps": steps, "warmup": warmup, "n_train": n_train,
        "device": str(setup.device), "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "mixed_precision": cfg.train.mixed_precision, "channels_last": cfg.train.channels_last,
        "end_to_end_images_per_s": head["end_to_end_images_per_s"],
        "ceiling_images_per_s": head["ceiling_images_per_s"], "ratio": head["ratio"], "rows": rows,
    }
    stage_name = "" if setup.stage.name == "main" else f" (stage {setup.stage.name})"
    table = Table(title=f"{method}{stage_name} {backbone} {image_size}px B={results['batch_size']} "
                        f"mu={results['mu']}: {ips} images/step on "
                        f"{results['device_name']} ({steps} timed steps after {warmup})")
    for col in ("data path", "images on", "compile", "end to end (img/s)", "ceiling (img/s)", "ratio"):
        table.add_column(col, justify="right")
    for r in rows:
        path = f"{r['augment_on']}" + (f" ({r['workers']} workers)" if r["augment_on"] == "cpu" else "")
        table.add_row(path, r["images_on"], r["compile"], f"{r['end_to_end_images_per_s']:,.0f}",
                      f"{r['ceiling_images_per_s']:,.0f}", f"{r['ratio']:.2f}")
    console.print(table)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
    return results
