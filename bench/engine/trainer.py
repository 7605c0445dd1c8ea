"""The training loop: one run of one method on one split, on HF Accelerate.

Flat and readable, in the manner of the Accelerate examples: build data, model, optimiser and method;
then, per iteration, sample index batches, make the views the method declared, call its
`training_step`, step the optimiser and the EMA; evaluate every `eval_every` iterations; checkpoint
with `accelerator.save_state` so an interrupted run resumes exactly where it stopped; finally write
the run record atomically.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration
from timm.utils import ModelEmaV3

from bench.config import RunConfig, run_id
from bench.data.cache import default_cache_dir, load_prepared, prepare_dataset
from bench.data.datasets import get_dataset
from bench.data.splits import check_budget, make_split, save_manifest
from bench.data.views import ViewMaker
from bench.engine import performance as perf
from bench.engine.evaluation import evaluate_model
from bench.engine.feed import check_augment_settings, make_feed
from bench.engine.model import build_model
from bench.engine.provenance import git_commit, host_info, package_versions
from bench.engine.streams import LABELED_SAMPLING, IndexStream, labeled_stream, step_seed
from bench.errors import FERBenchError
from bench.method import HookContext, Method, SetupInfo, StepContext
from bench.registry import create_method, get_method_class
from bench.results.record import SCHEMA, record_path, write_json_atomic


@dataclass
class TrainerState:
    """Loop bookkeeping saved with every checkpoint (registered with the Accelerator)."""

    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    curves: list[dict[str, float]] = field(default_factory=list)
    train_time_s: float = 0.0
    wall_time_s: float = 0.0
    images_seen: int = 0

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class MethodState:
    """Adapter so the method's own state goes into `save_state` / `load_state`."""

    def __init__(self, method: Method) -> None:
        self.method = method

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.method.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state["method"])


@dataclass
class RunPaths:
    record: Path
    run_dir: Path

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoint"


def run_paths(cfg: RunConfig) -> RunPaths:
    rid = run_id(cfg)
    out = Path(cfg.output_dir)
    return RunPaths(record=record_path(out / "records", rid), run_dir=out / "runs" / rid)


def build_optimizer(cfg: RunConfig, model: torch.nn.Module, fused: bool = False) -> torch.optim.Optimizer:
    o = cfg.optim
    extra = {"fused": True} if fused else {}
    # No weight decay on biases and normalisation parameters (as USB and timm do).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0, **extra)
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr, **extra)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, **extra)
    raise FERBenchError(f"optim.name={o.name!r}: expected sgd, adam or adamw")


def lr_factor(cfg: RunConfig, step: int) -> float:
    o, total = cfg.optim, cfg.train.iterations
    if o.warmup_iters and step < o.warmup_iters:
        return (step + 1) / o.warmup_iters
    if o.schedule == "constant":
        return 1.0
    if o.schedule == "cosine":  # FixMatch: lr * cos(7*pi*k / (16*K))
        return math.cos(7 * math.pi * step / (16 * total))
    raise FERBenchError(f"optim.schedule={o.schedule!r}: expected cosine or constant")


def validate(cfg: RunConfig) -> type[Method]:
    """Cheap checks before anything is written or computed."""
    cls = get_method_class(cfg.method)
    spec = get_dataset(cfg.data.name)
    num_classes = spec.num_classes_for(cfg.data.label_protocol)  # unknown label protocol
    if cfg.data.name == "synthfer" and cfg.data.options:
        raise FERBenchError("data.options: synthfer takes its generator parameters in data.synthfer")
    spec.resolve_options(cfg.data.options)  # unknown reader options
    spec.check_root(cfg.data.root)  # a sweep fails here, once, not in every run
    method = cls(num_classes=num_classes, **cfg.method_args)  # unknown method arguments
    if method.labeled_sampling not in LABELED_SAMPLING:
        raise FERBenchError(f"method {cfg.method!r}: labeled_sampling={method.labeled_sampling!r}; expected one of "
                            f"{', '.join(LABELED_SAMPLING)}")
    t = cfg.train
    if t.iterations < 1:
        raise FERBenchError(f"train.iterations={t.iterations}: expected a positive number of iterations")
    if t.batch_size < 1 or t.mu < 0:
        raise FERBenchError(f"train.batch_size={t.batch_size}, train.mu={t.mu}: expected batch_size >= 1, mu >= 0")
    if cls.requires_ema and cfg.train.ema_decay <= 0:
        raise FERBenchError(f"method {cfg.method!r} trains against an EMA teacher: train.ema_decay must be > 0")
    if cls.views and t.mu < 1:
        raise FERBenchError(f"method {cfg.method!r} needs unlabeled data: train.mu must be >= 1")
    check_budget(cfg.data.protocol, cfg.data.budget)  # unknown protocol / budget out of range
    if cfg.data.unlabeled not in ("all", "rest"):
        raise FERBenchError(f"data.unlabeled={cfg.data.unlabeled!r}: expected 'all' or 'rest'")
    check_augment_settings(cfg)  # data.augment_on, workers, device_cache_gb
    perf.check_performance_settings(cfg)  # train.compile, mixed_precision, channels_last, fused_optimizer
    return cls


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def _tracker() -> str | None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return None
    return "tensorboard"


def train(cfg: RunConfig, progress: Any = None,
          should_stop: Callable[[], bool] | None = None) -> dict[str, Any] | None:
    """Run (or resume) one run. Returns its record, or None when stopped early: at `train.stop_after`,
    or when `should_stop()` turns true (a pre-emption signal); either way with a checkpoint saved at an
    iteration boundary, so a later call resumes exactly there.

    If the run's record already exists it is returned as is: a finished run is never redone or
    overwritten.
    """
    method_cls = validate(cfg)
    paths = run_paths(cfg)
    if paths.record.exists():
        return json.loads(paths.record.read_text())

    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"  # set by accelerate launch
    handlers = []
    if deepspeed and not torch.cuda.is_available():
        # DeepSpeed on CPU hosts: without a gloo process group accelerate sees one process per rank
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    accelerator = Accelerator(
        # multi-process launches on CPU-only hosts: MULTI_CPU over gloo (cpu=True would turn DeepSpeed off)
        cpu=not torch.cuda.is_available() and not deepspeed,
        kwargs_handlers=handlers,
        mixed_precision=cfg.train.mixed_precision,
        log_with=_tracker(),
        project_config=ProjectConfiguration(project_dir=str(paths.run_dir), logging_dir=str(paths.run_dir / "tb")),
    )
    world, rank = accelerator.num_processes, accelerator.process_index
    if cfg.train.batch_size % world:
        raise FERBenchError(f"train.batch_size={cfg.train.batch_size} is not divisible by the {world} processes")
    rid = run_id(cfg)

    # --- data: prepared cache, split manifest, index streams -------------------------------------
    cache_dir = default_cache_dir(cfg.data.cache_dir)
    options = cfg.data.reader_options()
    with accelerator.main_process_first():  # the main process builds the cache; the others then find it
        prep_path = prepare_dataset(cfg.data.name, cfg.data.root, cfg.data.image_size, str(cache_dir), options,
                                    cfg.data.on_bad_image, label_protocol=cfg.data.label_protocol)
    data = load_prepared(prep_path)
    budget = 1.0 if method_cls.labeled_source == "all" else cfg.data.budget
    protocol = "fraction" if method_cls.labeled_source == "all" else cfg.data.protocol
    manifest = make_split(
        data.name, data.fingerprint, data.train.ids, data.train.labels, data.num_classes,
        protocol, budget, cfg.effective_split_seed, data.class_names,
    )
    manifest_path = save_manifest(manifest, cache_dir / "splits") if accelerator.is_main_process else None
    labeled_pool = np.asarray(manifest["labeled_index"], dtype=np.int64)
    all_train = np.arange(len(data.train.ids))
    unlabeled_pool = all_train if cfg.data.unlabeled == "all" else np.setdiff1d(all_train, labeled_pool)
    # Methods see an unlabeled image's position in the pool, so per-sample state has exactly one slot each.
    pool_position = np.full(len(all_train), -1, dtype=np.int64)
    pool_position[unlabeled_pool] = np.arange(len(unlabeled_pool))

    # Methods see a labeled image's position in the labeled pool ("pos"), for per-labeled-sample state.
    labeled_position = np.full(len(all_train), -1, dtype=np.int64)
    labeled_position[labeled_pool] = np.arange(len(labeled_pool))

    method = create_method(cfg.method, data.num_classes, cfg.method_args)
    method.setup(SetupInfo(num_classes=data.num_classes, num_labeled=len(labeled_pool),
                           num_unlabeled=len(unlabeled_pool), total_steps=cfg.train.iterations))
    B, mu = cfg.train.batch_size, cfg.train.mu
    lab_stream = labeled_stream(method.labeled_sampling, labeled_pool, data.train.labels[labeled_pool], B, cfg.seed)
    unl_stream = IndexStream(unlabeled_pool, mu * B, cfg.seed, "unlabeled") if method_cls.views else None
    train_images = torch.from_numpy(np.array(data.train.images)).permute(0, 3, 1, 2)
    train_labels = torch.from_numpy(data.train.labels)
    views = ViewMaker(cfg.augment)
    feed = make_feed(cfg, train_images, train_labels, views, lab_stream, unl_stream, method.labeled_views,
                     method.views, labeled_position, pool_position, accelerator.device, rank, world)

    # --- model, optimiser, EMA, method ----------------------------------------------------------
    torch.manual_seed(step_seed(cfg.seed, -1, 0, "init"))  # same initial weights on every process
    # The method's own modules (adapters, heads) join here, so they are optimised, EMA'd and checkpointed.
    model = method.build_model(build_model(cfg.model, data.num_classes))
    model = perf.apply_channels_last(model, cfg.train.channels_last)
    fused = perf.fused_optimizer(cfg, accelerator.device, accelerator.state.deepspeed_plugin is not None)
    optimizer = build_optimizer(cfg, model, fused[0])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s))
    if accelerator.state.deepspeed_plugin is not None:  # no dataloader to infer DeepSpeed's batch sizes from
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["train_micro_batch_size_per_gpu"] = cfg.train.batch_size // world
        ds_config["train_batch_size"] = cfg.train.batch_size
    model, optimizer = accelerator.prepare(model, optimizer)
    method.to(accelerator.device)
    ema = None
    if cfg.train.ema_decay > 0:
        ema = ModelEmaV3(accelerator.unwrap_model(model), decay=cfg.train.ema_decay, device=accelerator.device)
        ema.module.eval()
    perf.compile_model(accelerator.unwrap_model(model), cfg.train.compile)  # after the EMA copy: only training compiles
    state = TrainerState()
    accelerator.register_for_checkpointing(scheduler, state, MethodState(method), *([ema] if ema else []))
    if paths.checkpoint.is_dir():
        accelerator.load_state(str(paths.checkpoint))

    if accelerator.is_main_process:
        accelerator.init_trackers(rid, config=_flat(cfg.to_dict()))

    total = cfg.train.iterations
    stop_at = min(total, cfg.train.stop_after) if cfg.train.stop_after else total
    images_per_step = B * (len(method.labeled_views)) + (mu * B * len(method.views) if method.views else 0)
    log_acc: dict[str, list[float]] = {}
    session_start = time.perf_counter()
    task = progress.add_task(rid, total=total, completed=state.step) if progress is not None else None

    def evaluate_now() -> dict[str, Any]:
        eval_model = ema.module if ema is not None else accelerator.unwrap_model(model)
        m = evaluate_model(eval_model, data.test.images, data.test.labels, data.num_classes, views, accelerator)
        entry = {"step": state.step, **{k: m[k] for k in ("accuracy", "mean_class_accuracy", "macro_f1")}}
        state.history.append(entry)
        accelerator.log({f"test/{k}": v for k, v in entry.items() if k != "step"}, step=state.step)
        return m

    @torch.no_grad()
    def predict_labeled() -> tuple[torch.Tensor, torch.Tensor]:
        eval_model = ema.module if ema is not None else accelerator.unwrap_model(model)
        was_training = eval_model.training
        eval_model.eval()
        g = torch.Generator(device=accelerator.device).manual_seed(step_seed(cfg.seed, state.step, 0, "hook"))
        probs = []
        for start in range(0, len(labeled_pool), 512):
            idx = labeled_pool[start : start + 512]
            x = views.make("weak", train_images[idx].to(accelerator.device), g)
            with accelerator.autocast():
                probs.append(torch.softmax(eval_model(x).float(), dim=-1))
        eval_model.train(was_training)
        return torch.cat(probs), train_labels[labeled_pool].to(accelerator.device)

    hook_every = method.hook_every()
    final_metrics: dict[str, Any] | None = None
    model.train()
    while state.step < stop_at:
        t0 = time.perf_counter()
        step = state.step
        torch.manual_seed(step_seed(cfg.seed, step, rank, "dropout"))
        batch = feed.batch(step)
        ctx = StepContext(step=step, total_steps=total, num_classes=data.num_classes,
                          ema_model=ema.module if ema is not None else None)
        with accelerator.autocast():
            out = method.training_step(model, batch, ctx)
        if not torch.isfinite(out.loss):
            raise FERBenchError(f"run {rid}: loss became {out.loss.item()} at iteration {step}; lower optim.lr?")
        accelerator.backward(out.loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(accelerator.unwrap_model(model), step=step)
        state.step += 1
        state.images_seen += images_per_step * world
        if hook_every and state.step % hook_every == 0:
            epoch = state.step // hook_every
            method.on_hook(HookContext(step=state.step, epoch=epoch, predict_labeled=predict_labeled))
        state.train_time_s += time.perf_counter() - t0

        for k, v in {"loss": out.loss.item(), **out.logs}.items():
            log_acc.setdefault(k, []).append(float(v))
        if state.step % cfg.train.log_every == 0 or state.step == total:
            means = {k: float(np.mean(v)) for k, v in log_acc.items()}
            means["lr"] = scheduler.get_last_lr()[0]
            state.curves.append({"step": state.step, **means})
            accelerator.log({f"train/{k}": v for k, v in means.items()}, step=state.step)
            log_acc = {}
        if state.step % cfg.train.eval_every == 0 or state.step == total:
            final_metrics = evaluate_now()
        if progress is not None:
            last = state.history[-1]["accuracy"] if state.history else float("nan")
            progress.update(task, completed=state.step, description=f"{rid} acc={last:.3f}")
        stop_now = should_stop is not None and should_stop()
        if state.step < total and (state.step % cfg.train.checkpoint_every == 0 or state.step == stop_at or stop_now):
            state.wall_time_s += time.perf_counter() - session_start
            session_start = time.perf_counter()
            save_checkpoint(accelerator, paths.checkpoint)
        if stop_now:
            break

    state.wall_time_s += time.perf_counter() - session_start
    feed.close()
    if progress is not None:
        progress.remove_task(task)
    if state.step < total:  # stopped on purpose (stop_after, should_stop): the checkpoint holds the state
        accelerator.end_training()
        return None

    if final_metrics is None:  # resumed exactly at the end: evaluate the restored weights
        final_metrics = evaluate_now()
    record = build_record(cfg, rid, data, manifest, manifest_path, len(unlabeled_pool), final_metrics, state, world,
                          method)
    ds = accelerator.state.deepspeed_plugin
    record["distributed"] = {"type": str(accelerator.distributed_type).split(".")[-1],
                             "backend": accelerator.state.backend,
                             "zero_stage": ds.zero_stage if ds is not None else None}
    record["performance"] = perf.performance_block(cfg, feed, accelerator.device, fused, record["images_per_s"])
    if accelerator.is_main_process:
        # a record is never overwritten: if a duplicate job of this run finished first, its record stays
        write_json_atomic(paths.record, record, overwrite=False)
        _write_run_artifacts(record, paths, ema.module if ema is not None else accelerator.unwrap_model(model))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return record


def save_checkpoint(accelerator: Accelerator, path: Path) -> None:
    """save_state into a fresh folder, then swap it in, so a crash never leaves a half checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        old = path.with_name(path.name + ".old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _write_run_artifacts(record: dict[str, Any], paths: RunPaths, eval_model: torch.nn.Module) -> None:
    from bench.results.plots import plot_run_curves

    paths.run_dir.mkdir(parents=True, exist_ok=True)
    plot_run_curves(record, paths.run_dir / "curves.png")
    torch.save(eval_model.state_dict(), paths.run_dir / "final_model.pt")
    shutil.rmtree(paths.checkpoint, ignore_errors=True)  # the record and the final weights are the result


def build_record(
    cfg: RunConfig,
    rid: str,
    data: Any,
    manifest: dict[str, Any],
    manifest_path: Path | None,
    n_unlabeled: int,
    final: dict[str, Any],
    state: TrainerState,
    world: int,
    method: Method,
) -> dict[str, Any]:
    accs = [h["accuracy"] for h in state.history]
    unl_batch = cfg.train.mu * cfg.train.batch_size if method.views else 0
    final_keys = ("accuracy", "mean_class_accuracy", "macro_f1", "per_class_recall", "confusion_matrix")
    best = max(state.history, key=lambda h: h["accuracy"])
    return {
        "schema": SCHEMA,
        "run_id": rid,
        "method": cfg.method,
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
            "manifest_file": str(manifest_path) if manifest_path else None,
            "n_labeled": manifest["n_labeled"],
            "n_unlabeled": n_unlabeled,
            "per_class_labeled": manifest["per_class_labeled"],
        },
        "config": cfg.to_dict(),
        "method_hparams": method.hparams,
        "method_info": method.info(),
        "preset": cfg.preset,
        "backbone": cfg.model.backbone,
        "pretrained_file": cfg.model.pretrained_file,
        "image_size": cfg.data.image_size,
        "world_size": world,
        "iterations": cfg.train.iterations,
        "global_batch": {"labeled": cfg.train.batch_size, "unlabeled": unl_batch},
        "metrics": {
            "final": {k: final[k] for k in final_keys},
            "last5_median_accuracy": float(np.median(accs[-5:])),
            "best_accuracy": best["accuracy"],
            "best_step": best["step"],
            "n_test": len(data.test.ids),
        },
        "history": state.history,
        "curves": state.curves,
        "wall_time_s": round(state.wall_time_s, 3),
        "train_time_s": round(state.train_time_s, 3),
        "images_per_s": round(state.images_seen / max(state.train_time_s, 1e-9), 1),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "host": host_info(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
