"""The training loop: one run of one method on one split, on HF Accelerate.

Flat and readable, in the manner of the Accelerate examples: build data, model, optimiser and method;
then, per iteration, sample index batches, make the views the method declared, call its
`training_step`, step the optimiser and the EMA; evaluate every `eval_every` iterations; checkpoint
with `accelerator.save_state` so an interrupted run resumes exactly where it stopped; finally write
the run record atomically.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration

from bench.config import RunConfig, apply_mapping, check_config, config_from_dict, run_id
from bench.data.cache import default_cache_dir, load_prepared, prepare_dataset
from bench.data.datasets import get_dataset
from bench.data.splits import check_budget, make_split, save_manifest
from bench.data.views import ViewMaker
from bench.engine import performance as perf
from bench.engine.checkpoints import load_checkpoint, remove_checkpoints, save_checkpoint
from bench.engine.ema import WalkingEma
from bench.engine.evaluation import evaluate_model
from bench.engine.feed import make_feed
from bench.engine.image_store import take
from bench.engine.model import build_model, check_model, parameter_checksum
from bench.engine.provenance import git_commit, host_info, package_versions
from bench.engine.streams import LABELED_SAMPLING, IndexStream, labeled_stream, step_seed
from bench.errors import FERBenchError
from bench.method import HookContext, Method, SetupInfo, Stage, StepContext, set_forward_batching, this_process_only
from bench.registry import create_method, get_method_class
from bench.results.record import SCHEMA, record_path, write_json_atomic, write_predictions


@dataclass
class TrainerState:
    """Loop bookkeeping saved with every checkpoint (registered with the Accelerator)."""

    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    curves: list[dict[str, float]] = field(default_factory=list)
    train_time_s: float = 0.0
    wall_time_s: float = 0.0
    images_seen: int = 0
    #: one entry per process lifetime that trained this stage: the step it started at (0, or the step of the
    #: checkpoint it resumed from) and how many steps it executed, so a resume can be told from a restart
    sessions: list[dict[str, int]] = field(default_factory=list)
    state_checks: int = 0  # checkpoints at which every process was found to hold the same method state

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class LoopCheckpoint:
    """What `save_state` keeps besides model and optimiser, for the stage being trained: schedule, loop
    bookkeeping, the method's state and the EMA. Registered once; each stage fills it with its own."""

    def __init__(self, method: Method) -> None:
        self.method = method
        self.stage = ""
        self.scheduler: Any = None
        self.state: TrainerState | None = None
        self.ema: WalkingEma | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "scheduler": self.scheduler.state_dict(), "trainer": self.state.state_dict(),
                "method": self.method.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["stage"] != self.stage:
            raise FERBenchError(f"checkpoint of stage {state['stage']!r} found where stage {self.stage!r} resumes")
        self.scheduler.load_state_dict(state["scheduler"])
        self.state.load_state_dict(state["trainer"])
        self.method.load_state_dict(state["method"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])


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
        return torch.optim.Adam(groups, lr=o.lr, betas=tuple(o.betas), **extra)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), **extra)
    raise FERBenchError(f"optim.name={o.name!r}: expected sgd, adam or adamw")


def lr_factor(cfg: RunConfig, step: int) -> float:
    o, total = cfg.optim, cfg.train.iterations
    if o.warmup_iters and step < o.warmup_iters:
        return (step + 1) / o.warmup_iters
    if o.schedule == "constant":
        return 1.0
    if o.schedule == "cosine":  # FixMatch: lr * cos(7*pi*k / (16*K))
        return math.cos(7 * math.pi * step / (16 * total))
    if o.schedule == "halfcosine":  # MAE / timm CosineLRScheduler: half a cosine to min_lr, then min_lr
        span = o.decay_iters or total
        floor = o.min_lr / o.lr if o.lr else 0.0
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, span) / span))
    raise FERBenchError(f"optim.schedule={o.schedule!r}: expected cosine, halfcosine or constant")


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
    stages = method.stages()
    unknown = sorted(set(cfg.stages) - set(cls.stage_names))
    if unknown:
        raise FERBenchError(f"stages.{unknown[0]}: method {cfg.method!r} has no such stage; its stages: "
                            f"{', '.join(cls.stage_names)}")
    for stage in stages:  # each stage's config is checked as it is built (types, ranges)
        scfg = stage_config(cfg, stage)
        where = "" if stage.name == "main" else f" (stage {stage.name})"
        t = scfg.train
        if (cls.requires_ema or stage.requires_ema) and t.ema_decay <= 0:
            raise FERBenchError(f"method {cfg.method!r} trains against an EMA teacher: train.ema_decay must be > 0"
                                f"{where}")
        if stage.views and t.mu < 1:
            raise FERBenchError(f"method {cfg.method!r} needs unlabeled data{where}: train.mu must be >= 1")
        lo, hi = scfg.augment.rrc_scale
        if lo > hi:
            raise FERBenchError(f"augment.rrc_scale={[lo, hi]}{where}: expected [smallest, largest] area fraction")
    check_budget(cfg.data.protocol, cfg.data.budget)  # budget out of range for its protocol
    check_model(cfg.model)  # unknown backbone; a pretrained file that does not fit it
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


@dataclass
class RunData:
    """The prepared data of a run, shared by its stages: images, split manifest and index pools."""

    data: Any
    manifest: dict[str, Any]
    manifest_path: Path | None
    labeled_pool: np.ndarray
    unlabeled_pool: np.ndarray
    images: torch.Tensor  # (N, C, H, W) uint8 view of the memory-mapped training split (gather with index_select)
    labels: torch.Tensor
    pool_position: np.ndarray  # training index -> position in the unlabeled pool, -1 elsewhere
    labeled_position: np.ndarray  # training index -> position in the labeled pool, -1 elsewhere

    def with_extra_unlabeled(self, extra: np.ndarray) -> RunData:
        """A copy whose unlabeled pool also holds `extra` (M, H, W, C) uint8 images (label -1)."""
        n, m = len(self.images), len(extra)
        new = np.arange(n, n + m)
        pool = np.concatenate([self.unlabeled_pool, new])
        pool_position = np.concatenate([self.pool_position, len(self.unlabeled_pool) + np.arange(m)])
        return dataclasses.replace(
            self, unlabeled_pool=pool, pool_position=pool_position,
            images=torch.cat([self.images, torch.from_numpy(extra).permute(0, 3, 1, 2)]),
            labels=torch.cat([self.labels, torch.full((m,), -1, dtype=self.labels.dtype)]),
            labeled_position=np.concatenate([self.labeled_position, np.full(m, -1, dtype=np.int64)]))


def prepare_run_data(cfg: RunConfig, accelerator: Accelerator, method_cls: type[Method]) -> RunData:
    """Prepare (or reuse) the dataset cache, make and save the split manifest, and lay out the pools."""
    cache_dir = default_cache_dir(cfg.data.cache_dir)
    with accelerator.main_process_first():  # the main process builds the cache; the others then find it
        prep_path = prepare_dataset(cfg.data.name, cfg.data.root, cfg.data.image_size, str(cache_dir),
                                    cfg.data.reader_options(), cfg.data.on_bad_image,
                                    label_protocol=cfg.data.label_protocol)
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
    # ... and a labeled image's position in the labeled pool ("pos"), for per-labeled-sample state.
    labeled_position = np.full(len(all_train), -1, dtype=np.int64)
    labeled_position[labeled_pool] = np.arange(len(labeled_pool))
    return RunData(data, manifest, manifest_path, labeled_pool, unlabeled_pool,
                   # a view of the memory-mapped cache, not a copy: pages are read as batches touch them
                   torch.from_numpy(data.train.images).permute(0, 3, 1, 2),
                   torch.from_numpy(data.train.labels), pool_position, labeled_position)


def stage_run_data(cfg: RunConfig, stage: Stage, run: RunData, accelerator: Accelerator) -> RunData:
    """The run's data as `stage` trains on it: with its extra unlabeled image folders, if it has any."""
    if not stage.extra_unlabeled:
        return run
    from bench.data.imagefolder import load_image_folders

    with accelerator.main_process_first():
        extra = load_image_folders(stage.extra_unlabeled, cfg.data.image_size, default_cache_dir(cfg.data.cache_dir),
                                   progress=accelerator.is_main_process)
    return run.with_extra_unlabeled(extra)


def stage_config(cfg: RunConfig, stage: Stage) -> RunConfig:
    """The run config a stage trains with: the run's, then the stage's defaults, then `stages.<name>`."""
    if stage.name == "main" and not stage.defaults and not cfg.stages:
        return cfg
    scfg = config_from_dict(cfg.to_dict())
    for source, mapping in ((f"method stage {stage.name}", stage.defaults),
                            (f"stages.{stage.name}", cfg.stages.get(stage.name) or {})):
        if not isinstance(mapping, dict) or set(mapping) - STAGE_SECTIONS:
            raise FERBenchError(f"{source}: expected a mapping of {', '.join(sorted(STAGE_SECTIONS))} sections")
        apply_mapping(scfg, mapping, source=source)
    return check_config(scfg, f"stages.{stage.name}.")  # the run's own values were checked when it was built


STAGE_SECTIONS = {"optim", "train", "augment"}


@dataclass
class StageResult:
    model: torch.nn.Module  # the trained model, unwrapped: what the next stage starts from
    summary: dict[str, Any]  # what the record keeps of the stage
    state: TrainerState
    final_metrics: dict[str, Any] | None
    stage: Stage
    cfg: RunConfig  # the stage's resolved config
    eval_model: torch.nn.Module | None = None  # the EMA model when the stage kept one (artefacts, not hand-off)


def _make_accelerator(cfg: RunConfig, paths: RunPaths) -> Accelerator:
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"  # set by accelerate launch
    handlers = []
    if deepspeed and not torch.cuda.is_available():
        # DeepSpeed on CPU hosts: without a gloo process group accelerate sees one process per rank
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    return Accelerator(
        # multi-process launches on CPU-only hosts: MULTI_CPU over gloo (cpu=True would turn DeepSpeed off)
        cpu=not torch.cuda.is_available() and not deepspeed,
        kwargs_handlers=handlers,
        mixed_precision=cfg.train.mixed_precision,
        log_with=_tracker(),
        project_config=ProjectConfiguration(project_dir=str(paths.run_dir), logging_dir=str(paths.run_dir / "tb")),
    )


def train(cfg: RunConfig, progress: Any = None,
          should_stop: Callable[[], bool] | None = None) -> dict[str, Any] | None:
    """Run (or resume) one run. Returns its record, or None when stopped early: at `train.stop_after`,
    or when `should_stop()` turns true (a pre-emption signal); either way with a checkpoint saved at an
    iteration boundary, so a later call resumes exactly there.

    A multi-stage method's stages run in order; a finished stage leaves its trained weights and summary in
    `runs/<id>/stages/<name>/`, so a resumed run rebuilds the finished stages' models from them and goes on
    inside the stage that was interrupted (`stop_after` counts that stage's iterations).

    If the run's record already exists it is returned as is: a finished run is never redone or
    overwritten.
    """
    method_cls = validate(cfg)
    paths = run_paths(cfg)
    if paths.record.exists():
        return json.loads(paths.record.read_text())
    accelerator = _make_accelerator(cfg, paths)
    world = accelerator.num_processes
    rid = run_id(cfg)
    run = prepare_run_data(cfg, accelerator, method_cls)
    num_classes = run.data.num_classes
    method = create_method(cfg.method, num_classes, cfg.method_args)
    method.setup(SetupInfo(num_classes=num_classes, num_labeled=len(run.labeled_pool),
                           num_unlabeled=len(run.unlabeled_pool), total_steps=cfg.train.iterations))
    stages = method.stages()
    checkpoint = LoopCheckpoint(method)
    accelerator.register_for_checkpointing(checkpoint)
    if accelerator.is_main_process:
        accelerator.init_trackers(rid, config=_flat(cfg.to_dict()))

    multi = len(stages) > 1
    previous: torch.nn.Module | None = None
    pretrained: dict[str, Any] | None = None
    results: list[StageResult] = []
    for stage in stages:
        scfg = stage_config(cfg, stage)
        stage_dir = paths.run_dir / "stages" / stage.name if multi else paths.run_dir
        purpose = "init" if stage.name == "main" else f"init:{stage.name}"
        torch.manual_seed(step_seed(cfg.seed, -1, 0, purpose))  # same initial weights on every process
        base = build_model(scfg.model, num_classes)
        pretrained = pretrained or base.pretrained  # what the first model built loaded, for the record
        model = method.stage_model(stage, base, previous)
        if multi and (stage_dir / "stage.json").is_file():  # finished before an interruption: rebuild it
            model.load_state_dict(torch.load(stage_dir / "model.pt", map_location="cpu"))
            summary = json.loads((stage_dir / "stage.json").read_text())
            results.append(StageResult(model, summary, TrainerState(**summary.pop("loop")), summary.pop("final"),
                                       stage, scfg))
            previous = model
            continue
        stage_run = stage_run_data(cfg, stage, run, accelerator)
        label = f"{rid}:{stage.name}" if multi else rid
        result = _train_stage(accelerator, scfg, stage, method, model, stage_run, checkpoint,
                              stage_dir / "checkpoint", label, progress, should_stop)
        if result is None:  # stopped on purpose (stop_after, should_stop): the checkpoint holds the state
            accelerator.end_training()
            return None
        if multi and accelerator.is_main_process:  # hand-off: the finished stage's weights and summary
            stage_dir.mkdir(parents=True, exist_ok=True)
            torch.save(result.model.state_dict(), stage_dir / "model.pt")
            write_json_atomic(stage_dir / "stage.json", {**result.summary, "loop": result.state.state_dict(),
                                                         "final": result.final_metrics})
            remove_checkpoints(stage_dir / "checkpoint")
        accelerator.wait_for_everyone()
        results.append(result)
        previous = result.model

    scored = [r for r in results if r.stage.evaluate]
    if not scored:
        raise FERBenchError(f"method {cfg.method!r}: no stage evaluates a classifier, so the run has no result")
    last = scored[-1]
    record = build_record(cfg, rid, run.data, run.manifest, run.manifest_path, len(run.unlabeled_pool),
                          last.final_metrics, last.state, world, method, last.stage, last.cfg)
    record["pretrained"] = pretrained  # file, sha256, tensors loaded, missing and unexpected keys
    record["sessions"] = last.state.sessions  # where each process started and how many steps it ran
    if multi:
        record["stages"] = [r.summary for r in results]
        record["iterations"] = sum(r.summary["iterations"] for r in results)
        record["train_time_s"] = round(sum(r.state.train_time_s for r in results), 3)
        record["wall_time_s"] = round(sum(r.state.wall_time_s for r in results), 3)
        seen = sum(r.state.images_seen for r in results)
        record["images_per_s"] = round(seen / max(record["train_time_s"], 1e-9), 1)
    ds = accelerator.state.deepspeed_plugin
    record["distributed"] = {"type": str(accelerator.distributed_type).split(".")[-1],
                             "backend": accelerator.state.backend,
                             "zero_stage": ds.zero_stage if ds is not None else None,
                             # checkpoints at which all processes were checked to hold one method state
                             "method_state_checks": sum(r.state.state_checks for r in results)}
    record["performance"] = {**last.summary["performance"], "images_per_s": record["images_per_s"]}
    if accelerator.is_main_process:
        # the predictions first, so a record never names a file that is not there
        record["predictions"] = write_predictions(paths.record, last.final_metrics["predictions"],
                                                  run.data.test.labels, run.data.test.ids)
        # a record is never overwritten: if a duplicate job of this run finished first, its record stays
        write_json_atomic(paths.record, record, overwrite=False)
        _write_run_artifacts(record, paths, last.eval_model or last.model)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return record


@dataclass
class StageSetup:
    """What one stage trains with: the prepared model, optimiser, schedule and EMA, and its batch feed."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: WalkingEma | None
    feed: Any
    views: ViewMaker
    images_per_step: int  # labeled and unlabeled views of one global step
    fused: tuple[bool, str | None]  # fused optimiser kernels used, and why not when not


def setup_stage(accelerator: Accelerator, cfg: RunConfig, stage: Stage, method: Method, model: torch.nn.Module,
                run: RunData, compile_mode: str | None = None) -> StageSetup:
    """The set-up of a stage, as the training loop and `ferbench bench train` both use it: the labeled and
    unlabeled streams and feed of the stage's views, the model in its memory layout, the optimiser (fused where
    available), the schedule, Accelerate's preparation, the method's state on the device, the EMA and
    torch.compile (`compile_mode`, default the config's)."""
    world, rank = accelerator.num_processes, accelerator.process_index
    if cfg.train.batch_size % world:
        raise FERBenchError(f"train.batch_size={cfg.train.batch_size} is not divisible by the {world} processes")
    B, mu = cfg.train.batch_size, cfg.train.mu
    labeled_pool = run.labeled_pool
    lab_stream = labeled_stream(method.labeled_sampling, labeled_pool, run.data.train.labels[labeled_pool], B,
                                cfg.seed)
    unl_stream = IndexStream(run.unlabeled_pool, mu * B, cfg.seed, "unlabeled") if stage.views else None
    views = ViewMaker(cfg.augment)
    feed = make_feed(cfg, run.images, run.labels, views, lab_stream, unl_stream, stage.labeled_views, stage.views,
                     run.labeled_position, run.pool_position, accelerator.device, rank, world,
                     purpose="augment" if stage.name == "main" else f"augment:{stage.name}")
    accelerator.free_memory()  # the previous stage's model and optimiser leave the accelerator
    model = perf.apply_channels_last(model, cfg.train.channels_last)
    fused = perf.fused_optimizer(cfg, accelerator.device, accelerator.state.deepspeed_plugin is not None)
    optimizer = build_optimizer(cfg, model, fused[0])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s))
    if accelerator.state.deepspeed_plugin is not None:  # no dataloader to infer DeepSpeed's batch sizes from
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["train_micro_batch_size_per_gpu"] = cfg.train.batch_size // world
        ds_config["train_batch_size"] = cfg.train.batch_size
    set_forward_batching(model, cfg.train.forward)
    model, optimizer = accelerator.prepare(model, optimizer)
    method.to(accelerator.device)
    ema = None
    if cfg.train.ema_decay > 0:
        ema = WalkingEma(accelerator.unwrap_model(model), decay=cfg.train.ema_decay, device=accelerator.device,
                         walk=cfg.train.ema_walk, student_decay=cfg.train.student_decay)
        ema.module.eval()
    # after the EMA copy: only training compiles
    perf.compile_model(accelerator.unwrap_model(model), cfg.train.compile if compile_mode is None else compile_mode)
    return StageSetup(model, optimizer, scheduler, ema, feed, views, images_per_step(cfg, stage), fused)


def images_per_step(cfg: RunConfig, stage: Stage) -> int:
    """Images one global step of `stage` trains on: B per labeled view, mu * B per unlabeled view."""
    B, mu = cfg.train.batch_size, cfg.train.mu
    return B * len(stage.labeled_views) + (mu * B * len(stage.views) if stage.views else 0)


def _train_stage(accelerator: Accelerator, cfg: RunConfig, stage: Stage, method: Method, model: torch.nn.Module,
                 run: RunData, checkpoint: LoopCheckpoint, checkpoint_dir: Path, label: str, progress: Any,
                 should_stop: Callable[[], bool] | None) -> StageResult | None:
    """The training loop of one stage: returns its result, or None when stopped with a checkpoint saved."""
    world, rank = accelerator.num_processes, accelerator.process_index
    data, num_classes = run.data, run.data.num_classes
    labeled_pool = run.labeled_pool
    start_checksum = parameter_checksum(model)
    s = setup_stage(accelerator, cfg, stage, method, model, run)
    model, optimizer, scheduler, ema, feed, views = s.model, s.optimizer, s.scheduler, s.ema, s.feed, s.views
    fused, step_images = s.fused, s.images_per_step
    state = TrainerState()
    checkpoint.stage, checkpoint.scheduler, checkpoint.state, checkpoint.ema = stage.name, scheduler, state, ema
    load_checkpoint(accelerator, checkpoint_dir)
    state.sessions.append({"start_step": state.step, "steps": 0})

    total = cfg.train.iterations
    stop_at = min(total, cfg.train.stop_after) if cfg.train.stop_after else total
    log_acc: dict[str, list[float]] = {}
    session_start = time.perf_counter()
    task = progress.add_task(label, total=total, completed=state.step) if progress is not None else None
    step_name = "" if stage.name == "main" else f"{stage.name}/"

    def eval_model() -> torch.nn.Module:
        return ema.module if ema is not None else accelerator.unwrap_model(model)

    def evaluate_now() -> dict[str, Any]:
        m = evaluate_model(eval_model(), data.test.images, data.test.labels, num_classes, views, accelerator)
        entry = {"step": state.step, **{k: m[k] for k in ("accuracy", "mean_class_accuracy", "macro_f1")}}
        state.history.append(entry)
        accelerator.log({f"test/{step_name}{k}": v for k, v in entry.items() if k != "step"}, step=state.step)
        return m

    @torch.no_grad()
    def predict_labeled() -> tuple[torch.Tensor, torch.Tensor]:
        m = eval_model()
        was_training = m.training
        m.eval()
        g = torch.Generator(device=accelerator.device).manual_seed(step_seed(cfg.seed, state.step, 0, "hook"))
        probs = []
        for start in range(0, len(labeled_pool), 512):
            idx = labeled_pool[start : start + 512]
            x = views.make("weak", take(run.images, idx).to(accelerator.device), g)
            with accelerator.autocast():
                probs.append(torch.softmax(m(x).float(), dim=-1))
        m.train(was_training)
        return torch.cat(probs), run.labels[labeled_pool].to(accelerator.device)

    hook_every = method.hook_every()
    gather = accelerator.gather if world > 1 else this_process_only
    nonfinite: torch.Tensor | None = None  # whether any loss since `last_checked` was nan or inf, on the device
    last_checked = state.step
    final_metrics: dict[str, Any] | None = None
    last_logs: dict[str, float] = {}
    model.train()
    while state.step < stop_at:
        t0 = time.perf_counter()
        step = state.step
        torch.manual_seed(step_seed(cfg.seed, step, rank, "dropout"))
        batch = feed.batch(step)
        ctx = StepContext(step=step, total_steps=total, num_classes=num_classes,
                          ema_model=ema.module if ema is not None else None, stage=stage.name,
                          denormalize=views.denormalize, gather=gather)
        out = optimisation_step(accelerator, method, model, optimizer, ema, batch, ctx)
        scheduler.step()
        state.step += 1
        state.sessions[-1]["steps"] += 1
        state.images_seen += step_images * world
        if hook_every and state.step % hook_every == 0:
            epoch = state.step // hook_every
            method.on_hook(HookContext(step=state.step, epoch=epoch, predict_labeled=predict_labeled))
        state.train_time_s += time.perf_counter() - t0

        for k, v in {"loss": out.loss.detach(), **out.logs}.items():
            log_acc.setdefault(k, []).append(v)
        bad = ~torch.isfinite(out.loss.detach())
        nonfinite = bad if nonfinite is None else nonfinite | bad
        if should_stop is not None and should_stop():  # this process was signalled; the others learn of it
            accelerator.set_trigger()  # at the next agreement point, so that all stop at the same step
        log_now = state.step % cfg.train.log_every == 0 or state.step == total
        eval_now = stage.evaluate and (state.step % cfg.train.eval_every == 0 or state.step == total)
        periodic = state.step % cfg.train.checkpoint_every == 0 or state.step == stop_at
        stop_now = False
        if log_now or eval_now or periodic:  # agreement points (the last step is a log step): the same everywhere
            # the only host reads of the step's values, so that no non-finite state is evaluated or saved
            check_finite(nonfinite, f"run {label}", last_checked, state.step)
            nonfinite, last_checked = None, state.step
            stop_now = should_stop is not None and accelerator.check_trigger()
        checkpoint_now = state.step < total and (periodic or stop_now)
        if log_now:
            means = {k: float(np.mean(v)) for k, v in read_logs(log_acc).items()}
            means["lr"] = scheduler.get_last_lr()[0]
            state.curves.append({"step": state.step, **means})
            accelerator.log({f"train/{step_name}{k}": v for k, v in means.items()}, step=state.step)
            log_acc, last_logs = {}, means
        if eval_now:
            final_metrics = evaluate_now()
        if progress is not None:
            last = state.history[-1]["accuracy"] if state.history else float("nan")
            progress.update(task, completed=state.step, description=f"{label} acc={last:.3f}")
        if checkpoint_now:
            if world > 1:  # the state every process saves must be one state: rank 0's is what is saved
                check_state_agrees(accelerator, method, ema, f"run {label}", state.step)
                state.state_checks += 1
            state.wall_time_s += time.perf_counter() - session_start
            session_start = time.perf_counter()
            save_checkpoint(accelerator, checkpoint_dir, state.step)
        if stop_now:
            break

    state.wall_time_s += time.perf_counter() - session_start
    feed.close()
    if progress is not None:
        progress.remove_task(task)
    if state.step < total:
        return None
    if stage.evaluate and final_metrics is None:  # resumed exactly at the end: evaluate the restored weights
        final_metrics = evaluate_now()
    trained = accelerator.unwrap_model(model)
    images_per_s = round(state.images_seen / max(state.train_time_s, 1e-9), 1)
    summary = {
        "name": stage.name,
        "iterations": total,
        "unlabeled_pool": len(run.unlabeled_pool) if stage.views else 0,
        "config": {k: cfg.to_dict()[k] for k in sorted(STAGE_SECTIONS)},
        "train_time_s": round(state.train_time_s, 3),
        "wall_time_s": round(state.wall_time_s, 3),
        "images_per_s": images_per_s,
        "last_logs": last_logs or (state.curves[-1] if state.curves else {}),
        "accuracy": final_metrics["accuracy"] if final_metrics else None,
        "start_checksum": start_checksum,
        "end_checksum": parameter_checksum(trained),
        "sessions": state.sessions,
        "performance": perf.performance_block(cfg, feed, accelerator.device, fused, images_per_s),
    }
    return StageResult(trained, summary, state, final_metrics, stage, cfg, eval_model())


def state_digest(state: Any) -> int:
    """A 63-bit digest of a state: nested dicts of tensors and values, in key order."""
    import hashlib

    h = hashlib.sha256()

    def feed(key: str, value: Any) -> None:
        h.update(key.encode())
        if isinstance(value, torch.Tensor):
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(value, dict):
            for k in sorted(value, key=str):
                feed(f"{key}.{k}", value[k])
        else:
            h.update(repr(value).encode())

    feed("", state)
    return int.from_bytes(h.digest()[:8], "big") >> 1


def check_state_agrees(accelerator: Accelerator, method: Method, ema: WalkingEma | None, where: str,
                       step: int) -> None:
    """Every process must hold the same method state (counts, EMAs, thresholds) and the same EMA model buffers
    before rank 0's are saved as the run's: one line naming what differs and the step otherwise."""
    parts = {f"method {method.name!r}": method.state_dict()}
    if ema is not None:
        parts["the EMA model (its BatchNorm buffers)"] = dict(ema.module.named_buffers())
    mine = torch.tensor([state_digest(s) for s in parts.values()], dtype=torch.int64, device=accelerator.device)
    digests = accelerator.gather(mine[None]).tolist()  # processes x parts
    for k, what in enumerate(parts):
        if len({row[k] for row in digests}) > 1:
            fix = ("its state must be updated from statistics gathered across processes (StepContext.gather)"
                   if k == 0 else "BatchNorm statistics must be shared before the EMA update")
            raise FERBenchError(f"{where}: the state of {what} is not the same on the {len(digests)} processes "
                                f"at iteration {step}; {fix}")


def check_finite(nonfinite: torch.Tensor | None, where: str, since: int, step: int) -> None:
    """Raise if a loss of iterations (since, step] was nan or inf (`nonfinite`: accumulated on the device)."""
    if nonfinite is not None and bool(nonfinite):
        raise FERBenchError(f"{where}: loss became nan or inf between iterations {since + 1} and {step}; "
                            "lower optim.lr?")


def read_logs(acc: dict[str, list[Any]]) -> dict[str, list[float]]:
    """Logged values as floats, the tensors among them copied to the host in one transfer."""
    tensors = [v for vs in acc.values() for v in vs if isinstance(v, torch.Tensor)]
    host = iter(torch.stack([t.double().reshape(()) for t in tensors]).cpu().tolist()) if tensors else iter(())
    return {k: [next(host) if isinstance(v, torch.Tensor) else float(v) for v in vs] for k, vs in acc.items()}


def optimisation_step(accelerator: Accelerator, method: Method, model: torch.nn.Module,
                      optimizer: torch.optim.Optimizer, ema: WalkingEma | None, batch: Any, ctx: StepContext) -> Any:
    """One step as the loop takes it: the method's loss under autocast, backward, the optimiser and the EMA
    update. Returns the method's `StepOutput`; nothing in it is read on the host (the loop checks the loss for
    nan and inf at its log, evaluation and checkpoint steps)."""
    with accelerator.autocast():
        out = method.training_step(model, batch, ctx)
    accelerator.backward(out.loss)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        if accelerator.num_processes > 1:
            share_buffers(accelerator.unwrap_model(model))
        ema.update(accelerator.unwrap_model(model), step=ctx.step, lr=optimizer.param_groups[0]["lr"])
    return out


def share_buffers(model: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics), as DDP does at its next forward.

    Each process's forward updates the running statistics from its own batch, so without this the EMA model,
    which averages them, would differ from process to process: evaluation shards and methods that read the EMA
    model (Ada-CM's thresholds) would see several models."""
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def _write_run_artifacts(record: dict[str, Any], paths: RunPaths, eval_model: torch.nn.Module) -> None:
    from bench.results.plots import plot_run_curves

    paths.run_dir.mkdir(parents=True, exist_ok=True)
    plot_run_curves(record, paths.run_dir / "curves.png")
    torch.save(eval_model.state_dict(), paths.run_dir / "final_model.pt")
    remove_checkpoints(paths.checkpoint)  # the record and the final weights are the result


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
    stage: Stage,
    stage_cfg: RunConfig,
) -> dict[str, Any]:
    """The run record. `stage`, `stage_cfg`: the stage the metrics come from and its config (batch sizes)."""
    accs = [h["accuracy"] for h in state.history]
    sc = stage_cfg
    unl_batch = sc.train.mu * sc.train.batch_size if stage.views else 0
    final_keys = ("accuracy", "mean_class_accuracy", "macro_f1", "per_class_recall", "confusion_matrix")
    best = max(state.history, key=lambda h: h["accuracy"])
    return {
        "schema": SCHEMA,
        "run_id": rid,
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
        "global_batch": {"labeled": sc.train.batch_size, "unlabeled": unl_batch},
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
