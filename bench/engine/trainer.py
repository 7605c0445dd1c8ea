"""One run of one method on one split, on HF Accelerate: checks, data, the method's stages in order, the record.

Flat and readable, in the manner of the Accelerate examples. Each stage is a `StageRun` (bench/engine/stage.py:
model, optimiser, schedule, EMA, batch feed, method and loop state) trained by `run_stage_loop`, checkpointed with
`accelerator.save_state` so an interrupted run resumes exactly where it stopped; a finished stage of a multi-stage
method leaves its weights and summary behind for the next. Then the artefacts, and the record last, atomically.
"""

from __future__ import annotations

import json
import os
import platform
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration

from bench.config import RunConfig, config_hash, identity_values, run_id
from bench.data.datasets import get_dataset
from bench.data.splits import check_budget
from bench.engine.checkpoints import check_owner, remove_checkpoints
from bench.engine.fingerprint import current_fingerprint
from bench.engine.model import check_model
from bench.engine.provenance import git_commit
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
from bench.engine.tracker_results import hand_over_record, run_values, tell_results, tell_session
from bench.engine.trackers import (
    TrackerRun,
    check_trackers,
    closed_on_error,
    guarded_trackers,
    make_trackers,
    release_logs,
    tracker_statuses,
)
from bench.errors import FERBenchError
from bench.method import Method, SetupInfo, Stage
from bench.registry import create_method, get_method_class
from bench.results.record import (
    Record,
    read_predictions,
    read_record_file,
    record_path,
    save_torch_atomic,
    sha256_file,
    write_json_atomic,
    write_predictions,
)


@dataclass
class RunPaths:
    record: Path
    run_dir: Path

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoint"

    @property
    def final_model(self) -> Path:
        return self.run_dir / "final_model.pt"

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
    check_trackers(cfg.train.trackers)  # a tracker whose package is not installed
    return cls


def _check_stage(cfg: RunConfig, cls: type[Method], stage: Stage) -> None:
    scfg = stage_config(cfg, stage)
    t = scfg.train
    where = "" if stage.name == "main" else f" (stage {stage.name})"
    if (cls.requires_ema or stage.requires_ema) and t.ema_decay <= 0:
        raise FERBenchError(f"method {cfg.method!r} trains against an EMA teacher: train.ema_decay must be > 0{where}")
    if stage.views and t.mu < 1:
        raise FERBenchError(f"method {cfg.method!r} needs unlabeled data{where}: train.mu must be >= 1")
    d = cfg.data
    if stage.views and not stage.extra_unlabeled and d.unlabeled == "rest" and d.protocol == "fraction" \
            and d.budget >= 1.0:  # known before any data is prepared (other protocols: when the split is drawn)
        raise FERBenchError(f"data.unlabeled='rest' with data.budget={d.budget:g} (protocol 'fraction') labels every "
                            f"training image: none is left for the unlabeled views of method {cfg.method!r}{where}; "
                            "use data.unlabeled=all or a smaller budget")
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


def make_accelerator(cfg: RunConfig, project_dir: Path | None = None) -> Accelerator:
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"  # set by accelerate launch
    handlers = []
    if deepspeed and not torch.cuda.is_available():
        # DeepSpeed on CPU hosts: without a gloo process group accelerate sees one process per rank
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    # the trackers are added by `start_trackers`, on the main process only
    tracking = {} if project_dir is None else {
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
        return finished_record(paths)
    refuse_foreign_checkpoints(cfg, method_cls, paths)
    accelerator = make_accelerator(cfg, paths.run_dir)
    # the behaviour of the code that trains it, probed (or found cached) before training, never inside it; a probe
    # that cannot run is recorded as such and never stops the run
    fingerprint = current_fingerprint(cfg) if accelerator.is_main_process else None
    run = set_up_run(cfg, accelerator, method_cls)
    slot = CheckpointSlot()
    accelerator.register_for_checkpointing(slot)
    start_trackers(run, paths, fingerprint)
    with closed_on_error(accelerator):
        return _train_stages(run, paths, slot, progress, should_stop, fingerprint=fingerprint)


def _train_stages(run: RunSetup, paths: RunPaths, slot: CheckpointSlot, progress: Any,
                  should_stop: Callable[[], bool] | None, *, fingerprint: dict[str, Any] | None) -> Record | None:
    """Each stage in order (a finished one rebuilt from its folder), then the record; None when stopped early."""
    accelerator, stages = run.accelerator, run.method.stages()
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
            # a tracker's steps continue across stages: each stage's steps follow the earlier stages' iterations
            offset = sum(r.summary["iterations"] for r in results)
            slot.current = StageRun(run, stage, model, label=f"{run.run_id}:{stage.name}" if multi else None,
                                    step_offset=offset)
            result = run_stage_loop(slot.current, stage_dir / "checkpoint", progress, should_stop)
            if result is None:  # stopped on purpose (stop_after, should_stop): the checkpoint holds the state
                accelerator.end_training()
                return None
            if multi:
                _keep_finished_stage(accelerator, result, stage_dir)
            results.append(result)
        previous = results[-1].model
    record = _finish_run(run, results, paths, pretrained=pretrained, fingerprint=fingerprint)
    accelerator.end_training()
    return record


def start_trackers(run: RunSetup, paths: RunPaths, fingerprint: dict[str, Any] | None) -> None:
    """The run's trackers (`train.trackers`), on the main process: each continues the tracker run an earlier session
    of this run started, and is told the values that name the run and the facts of this session."""
    acc, cfg = run.accelerator, run.cfg
    if not acc.is_main_process:
        return
    t = cfg.train
    acc.log_with = make_trackers(t.trackers, TrackerRun(run.run_id, paths.run_dir, t.tracker_project, t.tracker_group))
    acc.init_trackers(run.run_id, config=run_values(run.run_id, cfg.recipe, run.data.manifest, fingerprint,
                                                    _flat(identity_values(cfg))))
    tell_session(guarded_trackers(acc), {"git_commit": git_commit() or "unknown", "host": platform.node(),
                                         "world_size": str(acc.num_processes)})


def refuse_foreign_checkpoints(cfg: RunConfig, method_cls: type[Method], paths: RunPaths) -> None:
    """Another run's checkpoint where a stage of this run would resume is refused before anything is written (the
    stage's resume would refuse it too, but only after the trackers had written their event files)."""
    num_classes = get_dataset(cfg.data.name).num_classes_for(cfg.data.label_protocol)
    stages = method_cls(num_classes=num_classes, **cfg.method_args).stages()  # as `validate` builds it
    multi = len(stages) > 1
    identity = {"run_id": run_id(cfg), "config_sha256": config_hash(cfg)}
    for stage in stages:
        stage_dir = paths.stage_dir(stage, multi)
        if not (multi and (stage_dir / "stage.json").is_file()):  # a finished stage is not resumed
            check_owner(stage_dir / "checkpoint", {**identity, "stage": stage.name})


def _finished_stage(run: RunSetup, stage: Stage, model: torch.nn.Module, stage_dir: Path) -> StageResult:
    model.load_state_dict(torch.load(stage_dir / "model.pt", map_location="cpu"))
    summary = json.loads((stage_dir / "stage.json").read_text())
    return StageResult(model, summary, LoopState(**summary.pop("loop")), summary.pop("final"), stage,
                       stage_config(run.cfg, stage))


def _keep_finished_stage(accelerator: Accelerator, result: StageResult, stage_dir: Path) -> None:
    """Hand-off: the finished stage's weights and summary, for the next stage and for a resumed run (the weights
    first, the summary that marks the stage finished last)."""
    if accelerator.is_main_process:
        with writing(f"stage {result.stage.name}'s hand-off"):
            save_torch_atomic(result.model.state_dict(), stage_dir / "model.pt")
            write_json_atomic(stage_dir / "stage.json", {**result.summary, "loop": result.state.state_dict(),
                                                         "final": result.final_metrics})
        remove_checkpoints(stage_dir / "checkpoint")
    accelerator.wait_for_everyone()


@contextmanager
def writing(what: str) -> Iterator[None]:
    """A write that fails (a full disk, a file-size limit) ends the run with one line naming the file; every file
    is written to a temporary name and renamed into place, so nothing half-written is left for a later run."""
    try:
        yield
    except OSError as e:
        raise FERBenchError(f"could not write {what}: {e.filename or ''}: {e.strerror or e}; nothing that a later "
                            "run would trust was left behind") from e


def _finish_run(run: RunSetup, results: list[StageResult], paths: RunPaths, *, pretrained: dict[str, Any] | None,
                fingerprint: dict[str, Any] | None) -> Record:
    """The run's files, then its record (the main process writes them): the predictions, the final weights and
    the curves first, each renamed into place whole, so a record never names a file that is not there."""
    last = scored_stage(run, results)
    acc = run.accelerator
    predictions = artifacts = None
    if acc.is_main_process:
        test = run.data.data.test
        with writing(f"the results of run {run.run_id}"):
            predictions = write_predictions(paths.record, last.final_metrics["predictions"], test.labels, test.ids)
            artifacts = {"final_model": _save_model(last.eval_model or last.model, paths)}
    record = build_record(run, results, pretrained=pretrained, predictions=predictions, artifacts=artifacts,
                          fingerprint=fingerprint)
    if acc.is_main_process:
        from bench.results.plots import plot_run_confusion, plot_run_curves

        with writing(f"the results of run {run.run_id}"):
            plot_run_curves(record, paths.run_dir / "curves.png")
            confusion = plot_run_confusion(record, paths.run_dir / "confusion.png")
        trackers = guarded_trackers(acc)
        release_logs(acc)
        tell_results(trackers, record, confusion)
        record["trackers"] = tracker_statuses(acc)  # which trackers received every log and the results
        with writing(f"the results of run {run.run_id}"):
            # a record is never overwritten: if a duplicate job of this run finished first, its record stays
            write_json_atomic(paths.record, record, overwrite=False)
        hand_over_record(trackers, paths.record)
        remove_checkpoints(paths.checkpoint)  # the record and the final weights are the result
    acc.wait_for_everyone()
    return record


def _save_model(model: torch.nn.Module, paths: RunPaths) -> dict[str, Any]:
    path = save_torch_atomic(model.state_dict(), paths.final_model)
    return {"file": os.path.relpath(path, paths.record.parent), "sha256": sha256_file(path),
            "bytes": path.stat().st_size}


def finished_record(paths: RunPaths) -> Record:
    """The record of a finished run, once every file it names is there and whole: otherwise one line saying what
    is missing or changed, and how to run it again."""
    rec = read_record_file(paths.record)
    problem = None
    try:
        read_predictions(paths.record, rec)
    except FERBenchError as e:
        problem = str(e).removeprefix(f"{paths.record}: ")
    model = rec.get("artifacts", {}).get("final_model")
    if problem is None and not paths.final_model.is_file():
        problem = f"its final weights {paths.final_model} are missing"
    elif problem is None and model is not None and sha256_file(paths.final_model) != model.get("sha256"):
        problem = f"its final weights {paths.final_model} are not the ones it wrote (sha256 differs)"
    elif problem is None and model is None and not _whole_zip(paths.final_model):
        problem = f"its final weights {paths.final_model} are unreadable"
    if problem is not None:
        raise FERBenchError(f"run {rec['run_id']} is recorded as done in {paths.record}, but {problem}; delete the "
                            "record to run it again")
    return rec


def _whole_zip(path: Path) -> bool:
    """Whether a `torch.save` file written before records named their weights' sha256 is whole (a zip archive
    whose members all pass their CRC)."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except (zipfile.BadZipFile, OSError):
        return False
