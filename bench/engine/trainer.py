"""One run of one method on one split, on HF Accelerate: checks, data, the method's stages in order, the record.

Flat and readable, in the manner of the Accelerate examples. Each stage is a `StageRun` (bench/engine/stage.py:
model, optimiser, schedule, EMA, batch feed, method and loop state) trained by `run_stage_loop`, checkpointed with
`accelerator.save_state` so an interrupted run resumes exactly where it stopped; a finished stage of a multi-stage
method leaves its weights and summary behind for the next. Then the artefacts, and the record last, atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration

from bench.config import RunConfig, run_id
from bench.data.datasets import get_dataset
from bench.data.splits import check_budget
from bench.engine.checkpoints import remove_checkpoints
from bench.engine.model import check_model
from bench.engine.run_data import prepare_run_data
from bench.engine.run_record import build_record, scored_stage
from bench.engine.stage import (
    LoopState,
    RunSetup,
    StageResult,
    StageRun,
    build_stage_model,
    run_stage_loop,
    stage_config,
)
from bench.engine.streams import LABELED_SAMPLING
from bench.errors import FERBenchError
from bench.method import Method, SetupInfo, Stage
from bench.registry import create_method, get_method_class
from bench.results.record import Record, record_path, write_json_atomic, write_predictions


@dataclass
class RunPaths:
    record: Path
    run_dir: Path

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoint"

    def stage_dir(self, stage: Stage, multi: bool) -> Path:
        """Where a stage keeps its checkpoints (and, in a multi-stage run, its finished weights and summary)."""
        return self.run_dir / "stages" / stage.name if multi else self.run_dir


def run_paths(cfg: RunConfig) -> RunPaths:
    rid = run_id(cfg)
    out = Path(cfg.output_dir)
    return RunPaths(record=record_path(out / "records", rid), run_dir=out / "runs" / rid)


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
    unknown = sorted(set(cfg.stages) - set(cls.stage_names))
    if unknown:
        raise FERBenchError(f"stages.{unknown[0]}: method {cfg.method!r} has no such stage; its stages: "
                            f"{', '.join(cls.stage_names)}")
    for stage in method.stages():  # each stage's config is checked as it is built (types, ranges)
        _check_stage(cfg, cls, stage)
    check_budget(cfg.data.protocol, cfg.data.budget)  # budget out of range for its protocol
    check_model(cfg.model)  # unknown backbone; a pretrained file that does not fit it
    return cls


def _check_stage(cfg: RunConfig, cls: type[Method], stage: Stage) -> None:
    scfg = stage_config(cfg, stage)
    t = scfg.train
    where = "" if stage.name == "main" else f" (stage {stage.name})"
    if (cls.requires_ema or stage.requires_ema) and t.ema_decay <= 0:
        raise FERBenchError(f"method {cfg.method!r} trains against an EMA teacher: train.ema_decay must be > 0{where}")
    if stage.views and t.mu < 1:
        raise FERBenchError(f"method {cfg.method!r} needs unlabeled data{where}: train.mu must be >= 1")
    lo, hi = scfg.augment.rrc_scale
    if lo > hi:
        raise FERBenchError(f"augment.rrc_scale={[lo, hi]}{where}: expected [smallest, largest] area fraction")


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


def make_accelerator(cfg: RunConfig, project_dir: Path | None = None) -> Accelerator:
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"  # set by accelerate launch
    handlers = []
    if deepspeed and not torch.cuda.is_available():
        # DeepSpeed on CPU hosts: without a gloo process group accelerate sees one process per rank
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    tracking = {} if project_dir is None else {
        "log_with": _tracker(),
        "project_config": ProjectConfiguration(project_dir=str(project_dir), logging_dir=str(project_dir / "tb"))}
    return Accelerator(
        # multi-process launches on CPU-only hosts: MULTI_CPU over gloo (cpu=True would turn DeepSpeed off)
        cpu=not torch.cuda.is_available() and not deepspeed,
        kwargs_handlers=handlers,
        mixed_precision=cfg.train.mixed_precision,
        **tracking,
    )


class CheckpointSlot:
    """The object registered with the Accelerator once per run: `save_state`/`load_state` reach the state of the
    stage being trained (`current`) through it."""

    def __init__(self) -> None:
        self.current: StageRun | None = None

    def state_dict(self) -> dict[str, Any]:
        return self.current.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current.load_state_dict(state)


def set_up_run(cfg: RunConfig, accelerator: Accelerator, method_cls: type[Method]) -> RunSetup:
    """The run's data, split and method (its state sized by the data), before any stage is built."""
    data = prepare_run_data(cfg, accelerator, method_cls)
    num_classes = data.data.num_classes
    method = create_method(cfg.method, num_classes, cfg.method_args)
    method.setup(SetupInfo(num_classes=num_classes, num_labeled=len(data.labeled_pool),
                           num_unlabeled=len(data.unlabeled_pool), total_steps=cfg.train.iterations))
    return RunSetup(accelerator, cfg, method, data, run_id(cfg))


def train(cfg: RunConfig, progress: Any = None,
          should_stop: Callable[[], bool] | None = None) -> Record | None:
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
    accelerator = make_accelerator(cfg, paths.run_dir)
    run = set_up_run(cfg, accelerator, method_cls)
    slot = CheckpointSlot()
    accelerator.register_for_checkpointing(slot)
    if accelerator.is_main_process:
        accelerator.init_trackers(run.run_id, config=_flat(cfg.to_dict()))
    stages = run.method.stages()
    multi = len(stages) > 1
    previous: torch.nn.Module | None = None
    pretrained: dict[str, Any] | None = None
    results: list[StageResult] = []
    for stage in stages:
        model, loaded = build_stage_model(run, stage, previous)
        pretrained = pretrained or loaded  # what the first model built loaded, for the record
        stage_dir = paths.stage_dir(stage, multi)
        if multi and (stage_dir / "stage.json").is_file():  # finished before an interruption: rebuild it
            results.append(_finished_stage(run, stage, model, stage_dir))
        else:
            slot.current = StageRun(run, stage, model, label=f"{run.run_id}:{stage.name}" if multi else None)
            result = run_stage_loop(slot.current, stage_dir / "checkpoint", progress, should_stop)
            if result is None:  # stopped on purpose (stop_after, should_stop): the checkpoint holds the state
                accelerator.end_training()
                return None
            if multi:
                _keep_finished_stage(accelerator, result, stage_dir)
            results.append(result)
        previous = results[-1].model
    record = _finish_run(run, results, pretrained, paths)
    accelerator.end_training()
    return record


def _finished_stage(run: RunSetup, stage: Stage, model: torch.nn.Module, stage_dir: Path) -> StageResult:
    model.load_state_dict(torch.load(stage_dir / "model.pt", map_location="cpu"))
    summary = json.loads((stage_dir / "stage.json").read_text())
    return StageResult(model, summary, LoopState(**summary.pop("loop")), summary.pop("final"), stage,
                       stage_config(run.cfg, stage))


def _keep_finished_stage(accelerator: Accelerator, result: StageResult, stage_dir: Path) -> None:
    """Hand-off: the finished stage's weights and summary, for the next stage and for a resumed run."""
    if accelerator.is_main_process:
        stage_dir.mkdir(parents=True, exist_ok=True)
        torch.save(result.model.state_dict(), stage_dir / "model.pt")
        write_json_atomic(stage_dir / "stage.json", {**result.summary, "loop": result.state.state_dict(),
                                                     "final": result.final_metrics})
        remove_checkpoints(stage_dir / "checkpoint")
    accelerator.wait_for_everyone()


def _finish_run(run: RunSetup, results: list[StageResult], pretrained: dict[str, Any] | None,
                paths: RunPaths) -> Record:
    """The predictions, the record and the run's artefacts (the main process writes them)."""
    last = scored_stage(run, results)
    acc = run.accelerator
    predictions = None
    if acc.is_main_process:  # the predictions first, so a record never names a file that is not there
        test = run.data.data.test
        predictions = write_predictions(paths.record, last.final_metrics["predictions"], test.labels, test.ids)
    record = build_record(run, results, pretrained, predictions)
    if acc.is_main_process:
        # a record is never overwritten: if a duplicate job of this run finished first, its record stays
        write_json_atomic(paths.record, record, overwrite=False)
        _write_run_artifacts(record, paths, last.eval_model or last.model)
    acc.wait_for_everyone()
    return record


def _write_run_artifacts(record: Record, paths: RunPaths, eval_model: torch.nn.Module) -> None:
    from bench.results.plots import plot_run_curves

    paths.run_dir.mkdir(parents=True, exist_ok=True)
    plot_run_curves(record, paths.run_dir / "curves.png")
    torch.save(eval_model.state_dict(), paths.run_dir / "final_model.pt")
    remove_checkpoints(paths.checkpoint)  # the record and the final weights are the result
