"""One stage of a run being trained: `StageRun` owns its model, optimiser, schedule, EMA, batch feed, method and
loop state, and offers what the loop (bench/engine/trainer.py) and `ferbench bench train` do with them: `step()`,
`log()`, `evaluate()`, `save()`/`resume()` and the checkpoint's `state_dict()`/`load_state_dict()`.

A step is a pure function of (seed, step, rank): the dropout seed and the batch are derived from them, so a resumed
or re-launched run trains exactly as an uninterrupted one. Nothing in a step is read on the host; the loss is checked
for nan and inf at agreement points (log, evaluation and checkpoint steps), which every process reaches together.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

from bench.config import STAGE_SECTIONS, RunConfig, apply_mapping, check_config, config_from_dict, config_hash
from bench.data.views import ViewMaker
from bench.engine import performance as perf
from bench.engine.checkpoints import load_checkpoint, save_checkpoint
from bench.engine.ema import WalkingEma
from bench.engine.evaluation import evaluate_model
from bench.engine.feed import FeedSpec, make_feed
from bench.engine.image_store import take
from bench.engine.model import build_model, parameter_checksum
from bench.engine.optim import build_optimizer, build_scheduler
from bench.engine.run_data import RunData, stage_run_data
from bench.engine.streams import IndexStream, labeled_stream, step_seed
from bench.engine.trackers import release_logs
from bench.errors import FERBenchError
from bench.method import (
    HookContext,
    Method,
    Stage,
    StepContext,
    StepOutput,
    set_forward_batching,
    this_process_only,
    unwrap_model,
)


@dataclass
class RunSetup:
    """What every stage of a run shares: the accelerator, the run's config, its method and its data."""

    accelerator: Accelerator
    cfg: RunConfig
    method: Method
    data: RunData
    run_id: str


def stage_config(cfg: RunConfig, stage: Stage) -> RunConfig:
    """The run config a stage trains with: the run's, then the stage's defaults, then `stages.<name>`."""
    if stage.name == "main" and not stage.defaults and not cfg.stages:
        return cfg
    scfg = config_from_dict(cfg.to_dict())
    for source, mapping in ((f"method stage {stage.name}", stage.defaults),
                            (f"stages.{stage.name}", cfg.stages.get(stage.name) or {})):
        if not isinstance(mapping, dict) or set(mapping) - set(STAGE_SECTIONS):
            raise FERBenchError(f"{source}: expected a mapping of {', '.join(sorted(STAGE_SECTIONS))} sections")
        apply_mapping(scfg, mapping, source=source)
    return check_config(scfg, f"stages.{stage.name}.")  # the run's own values were checked when it was built


def build_stage_model(run: RunSetup, stage: Stage, previous: torch.nn.Module | None
                      ) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """(the model `stage` trains, what `model.pretrained_file` loaded into its backbone), as every process builds
    it: initial weights seeded by the stage (so all processes start equal), the stage's backbone, then the
    method's `stage_model` (its wrapper, or the previous stage's model)."""
    torch.manual_seed(step_seed(run.cfg.seed, -1, 0, "init" if stage.name == "main" else f"init:{stage.name}"))
    base = build_model(stage_config(run.cfg, stage).model, run.data.data.num_classes)
    return run.method.stage_model(stage, base, previous), base.pretrained


def images_per_step(cfg: RunConfig, stage: Stage) -> int:
    """Images one global step of `stage` trains on: B per labeled view, mu * B per unlabeled view."""
    B, mu = cfg.train.batch_size, cfg.train.mu
    return B * len(stage.labeled_views) + (mu * B * len(stage.views) if stage.views else 0)


@dataclass
class LoopState:
    """Loop bookkeeping saved with every checkpoint."""

    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    curves: list[dict[str, float]] = field(default_factory=list)
    train_time_s: float = 0.0
    wall_time_s: float = 0.0
    images_seen: int = 0
    #: one entry per process lifetime that trained this stage: the step it started at (0, or the step of the
    #: checkpoint it resumed from) and how many steps it executed, so a resume can be told from a restart
    sessions: list[dict[str, Any]] = field(default_factory=list)
    state_checks: int = 0  # checkpoints at which every process was found to hold the same method state

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


@dataclass(frozen=True)
class Cadence:
    """When the loop logs, evaluates, checks and checkpoints: predicates of the step just completed."""

    total: int  # the stage's iterations
    stop_at: int  # `train.stop_after` (a simulated interruption), else total
    log_every: int
    eval_every: int
    checkpoint_every: int
    evaluates: bool  # the stage's model is a classifier evaluated on the test split

    @classmethod
    def of(cls, cfg: RunConfig, stage: Stage) -> Cadence:
        t = cfg.train
        return cls(t.iterations, min(t.iterations, t.stop_after) if t.stop_after else t.iterations, t.log_every,
                   t.eval_every, t.checkpoint_every, stage.evaluate)

    def log(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.total

    def evaluate(self, step: int) -> bool:
        return self.evaluates and (step % self.eval_every == 0 or step == self.total)

    def periodic_checkpoint(self, step: int) -> bool:
        return step % self.checkpoint_every == 0 or step == self.stop_at

    def agreement(self, step: int) -> bool:
        """Steps at which every process reads the loss on the host and learns whether to stop (the last step is
        a log step): the same steps everywhere."""
        return self.log(step) or self.evaluate(step) or self.periodic_checkpoint(step)

    def checkpoint(self, step: int, stopping: bool) -> bool:
        return step < self.total and (self.periodic_checkpoint(step) or stopping)


@dataclass
class StageResult:
    model: torch.nn.Module  # the trained model, unwrapped: what the next stage starts from
    summary: dict[str, Any]  # what the record keeps of the stage
    state: LoopState
    final_metrics: dict[str, Any] | None
    stage: Stage
    cfg: RunConfig  # the stage's resolved config
    eval_model: torch.nn.Module | None = None  # the EMA model when the stage kept one (artefacts, not hand-off)


class StageRun:
    """One stage, set up to train: the labeled and unlabeled streams and feed of the stage's views, the model in
    its memory layout, the optimiser (fused where available), the schedule, Accelerate's preparation, the method's
    state on the device, the EMA and torch.compile (`compile_mode`, default the config's)."""

    def __init__(self, run: RunSetup, stage: Stage, model: torch.nn.Module, *, compile_mode: str | None = None,
                 label: str | None = None, step_offset: int = 0) -> None:
        acc, cfg = run.accelerator, stage_config(run.cfg, stage)
        self.accelerator, self.cfg, self.stage, self.method = acc, cfg, stage, run.method
        self.run_id, self.config_sha256 = run.run_id, config_hash(run.cfg)
        self.label = label or run.run_id
        self.step_offset = step_offset  # the earlier stages' iterations: trackers see one step axis per run
        self.data = stage_run_data(cfg, stage, run.data, acc)
        self.num_classes = self.data.data.num_classes
        self.start_checksum = parameter_checksum(model)
        world, rank = acc.num_processes, acc.process_index
        if cfg.train.batch_size % world:
            raise FERBenchError(f"train.batch_size={cfg.train.batch_size} is not divisible by the {world} processes")
        self.feed = self._make_feed(rank, world)
        acc.free_memory()  # the previous stage's model and optimiser leave the accelerator
        model = perf.apply_channels_last(model, cfg.train.channels_last)
        self.fused = perf.fused_optimizer(cfg, acc.device, acc.state.deepspeed_plugin is not None)
        optimizer = build_optimizer(cfg, model, self.fused[0])
        self.scheduler = build_scheduler(cfg, optimizer)
        if acc.state.deepspeed_plugin is not None:  # no dataloader to infer DeepSpeed's batch sizes from
            ds_config = acc.state.deepspeed_plugin.deepspeed_config
            ds_config["train_micro_batch_size_per_gpu"] = cfg.train.batch_size // world
            ds_config["train_batch_size"] = cfg.train.batch_size
        set_forward_batching(model, cfg.train.forward)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.method.to(acc.device)
        self.ema: WalkingEma | None = None
        if cfg.train.ema_decay > 0:
            t = cfg.train
            self.ema = WalkingEma(self.student, decay=t.ema_decay, device=acc.device, walk=t.ema_walk,
                                  student_decay=t.student_decay, warmup=t.ema_warmup, buffers=t.ema_buffers)
            self.ema.module.eval()
        # after the EMA copy: only training compiles
        perf.compile_model(self.student, cfg.train.compile if compile_mode is None else compile_mode)
        self.images_per_step = images_per_step(cfg, stage)
        self.cadence = Cadence.of(cfg, stage)
        self.state = LoopState()
        self.final_metrics: dict[str, Any] | None = None
        self.last_logs: dict[str, float] = {}
        self._logs: dict[str, list[Any]] = {}  # the log window: each step's values since the last log
        self._window_lost = 0  # steps of the window a checkpoint without it could not restore
        self._nonfinite: torch.Tensor | None = None  # whether a loss since `_checked` was nan or inf, on the device
        self._checked = 0
        self.hook_every = self.method.hook_every()  # the probe calls it sooner (bench/engine/probe.py)
        self._gather = acc.gather if world > 1 else this_process_only
        self._session_start = time.perf_counter()
        self._totals: dict[str, torch.Tensor] = {}  # "sum" method states combined over processes, for a checkpoint

    def _make_feed(self, rank: int, world: int) -> Any:
        """The labeled and unlabeled index streams and the feed of the stage's views."""
        cfg, stage, data = self.cfg, self.stage, self.data
        B, mu = cfg.train.batch_size, cfg.train.mu
        lab = labeled_stream(self.method.labeled_sampling, data.labeled_pool,
                             data.data.train.labels[data.labeled_pool], B, cfg.seed)
        unl = IndexStream(data.unlabeled_pool, mu * B, cfg.seed, "unlabeled") if stage.views else None
        self.views = ViewMaker(cfg.augment)
        spec = FeedSpec(data.labels, self.views, lab, unl, tuple(stage.labeled_views), tuple(stage.views),
                        data.labeled_position, data.pool_position, cfg.seed, rank, world, cfg.train.channels_last,
                        purpose="augment" if stage.name == "main" else f"augment:{stage.name}")
        return make_feed(cfg, data.images, spec, self.accelerator.device)

    # ---- the step ---------------------------------------------------------------------------------------------

    @property
    def student(self) -> torch.nn.Module:
        """The model being trained, out of its DDP or DeepSpeed wrapper (Accelerate's unwrapping, which imports
        DeepSpeed and makes it print its accelerator line, only where DeepSpeed is in use)."""
        if self.accelerator.state.deepspeed_plugin is not None:
            return self.accelerator.unwrap_model(self.model)
        return unwrap_model(self.model)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The model evaluated (and read by hooks): the EMA model when the stage keeps one."""
        return self.ema.module if self.ema is not None else self.student

    def context(self, step: int) -> StepContext:
        return StepContext(step=step, total_steps=self.cfg.train.iterations, num_classes=self.num_classes,
                           ema_model=self.ema.module if self.ema is not None else None, stage=self.stage.name,
                           denormalize=self.views.denormalize, gather=self._gather)

    def step(self, batch: Any = None) -> StepOutput:
        """Train one step (on the feed's batch of this step, or on `batch`), then the method's hook when it is due;
        the loss and logs are accumulated on the device for `log`."""
        t0 = time.perf_counter()
        step = self.state.step
        torch.manual_seed(step_seed(self.cfg.seed, step, self.accelerator.process_index, "dropout"))
        out = self._optimise(self.feed.batch(step) if batch is None else batch, self.context(step))
        self.scheduler.step()
        self.state.step += 1
        if self.state.sessions:
            self.state.sessions[-1]["steps"] += 1
        self.state.images_seen += self.images_per_step * self.accelerator.num_processes
        if self.hook_every and self.state.step % self.hook_every == 0:
            self.method.on_hook(HookContext(step=self.state.step, epoch=self.state.step // self.hook_every,
                                            predict_labeled=self.predict_labeled))
        self.state.train_time_s += time.perf_counter() - t0
        for k, v in {"loss": out.loss.detach(), **out.logs}.items():
            self._logs.setdefault(k, []).append(v)
        bad = ~torch.isfinite(out.loss.detach())
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
        return out

    def _optimise(self, batch: Any, ctx: StepContext) -> StepOutput:
        """The method's loss under autocast, backward, the optimiser and the EMA update; nothing is read on the
        host (the loop checks the loss for nan and inf at its agreement points)."""
        acc = self.accelerator
        with acc.autocast():
            out = self.method.training_step(self.model, batch, ctx)
        acc.backward(out.loss)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            if acc.num_processes > 1:
                share_buffers(self.student)
            self.ema.update(self.student, step=ctx.step, lr=self.optimizer.param_groups[0]["lr"])
        return out

    @torch.no_grad()
    def predict_labeled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(probs, labels) of the evaluation model on weak views of the labeled pool (a method's hook)."""
        m, device = self.eval_model, self.accelerator.device
        was_training = m.training
        m.eval()
        g = torch.Generator(device=device).manual_seed(step_seed(self.cfg.seed, self.state.step, 0, "hook"))
        pool, probs = self.data.labeled_pool, []
        for start in range(0, len(pool), 512):
            x = self.views.make("weak", take(self.data.images, pool[start : start + 512]).to(device), g)
            with self.accelerator.autocast():
                probs.append(torch.softmax(m(x).float(), dim=-1))
        m.train(was_training)
        return torch.cat(probs), self.data.labels[pool].to(device)

    # ---- what the loop does at its decision points --------------------------------------------------------------

    def check_finite(self) -> None:
        """Raise if a loss since the last check was nan or inf: the only host read of the steps' values, so that no
        non-finite state is evaluated or saved."""
        if self._nonfinite is not None and bool(self._nonfinite):
            raise FERBenchError(f"run {self.label}: loss became nan or inf between iterations {self._checked + 1} "
                                f"and {self.state.step}; lower optim.lr?")
        self._nonfinite, self._checked = None, self.state.step

    def log(self) -> dict[str, float]:
        """The mean of each logged value since the last log, with the learning rate, appended to the curves."""
        means = {k: float(np.mean(v)) for k, v in read_logs(self._logs).items()}
        means["lr"] = self.scheduler.get_last_lr()[0]
        self.state.curves.append({"step": self.state.step, **means})
        self.accelerator.log({f"train/{self._prefix()}{k}": v for k, v in means.items()},
                             step=self.step_offset + self.state.step)
        self._logs, self.last_logs = {}, means
        return means

    def evaluate(self) -> dict[str, Any]:
        """Metrics of the evaluation model on the test split, appended to the history."""
        d = self.data.data
        m = evaluate_model(self.eval_model, d.test.images, d.test.labels, self.num_classes, self.views,
                           self.accelerator)
        entry = {"step": self.state.step, **{k: m[k] for k in ("accuracy", "mean_class_accuracy", "macro_f1")}}
        self.state.history.append(entry)
        self.accelerator.log({f"test/{self._prefix()}{k}": v for k, v in entry.items() if k != "step"},
                             step=self.step_offset + self.state.step)
        self.final_metrics = m
        return m

    def _prefix(self) -> str:
        return "" if self.stage.name == "main" else f"{self.stage.name}/"

    # ---- checkpoints -----------------------------------------------------------------------------------------

    @property
    def identity(self) -> dict[str, str]:
        """What a checkpoint of this stage says it belongs to."""
        return {"run_id": self.run_id, "config_sha256": self.config_sha256, "stage": self.stage.name}

    def resume(self, directory: Path) -> None:
        """Restore the newest complete checkpoint of `directory`, if any (refusing another run's), and open this
        process's session; a session resumed from a checkpoint that does not name its run says so."""
        loaded = load_checkpoint(self.accelerator, directory, self.identity)
        self.state.sessions.append({"start_step": self.state.step, "steps": 0})
        if loaded is not None and not loaded[1]:
            self.state.sessions[-1]["unverified_checkpoint"] = True  # written before checkpoints named their run
        if self._window_lost:  # the next logged means average only the steps trained since this resume
            self.state.sessions[-1]["log_window_lost_steps"] = self._window_lost
        self._checked = self.state.step
        self._session_start = time.perf_counter()

    def save(self, directory: Path) -> None:
        """Checkpoint at the current step. In a multi-process run every process must hold one method state and one
        EMA model first (checked: rank 0's is what is saved), and "sum" states are combined over the processes."""
        if self.accelerator.num_processes > 1:
            check_state_agrees(self.accelerator, self.method, self.ema, f"run {self.label}", self.state.step)
            self.state.state_checks += 1
            self._totals = {s.name: self.accelerator.reduce(getattr(self.method, s.name).clone(), "sum")
                            for s in self.method.state_specs() if s.reduce == "sum"}
        self.close_session()
        save_checkpoint(self.accelerator, directory, self.state.step, self.identity)
        self._totals = {}
        release_logs(self.accelerator)  # what the trackers were told waits for the checkpoint that covers it

    def close_session(self) -> None:
        """Add the wall time since the session (or its last checkpoint) began."""
        now = time.perf_counter()
        self.state.wall_time_s += now - self._session_start
        self._session_start = now

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps besides model and optimiser (which Accelerate saves): the stage, the schedule,
        the loop state, the method's state, the EMA and the log window (each step's logged values since the last
        log, as the host reads them at the next log: a resumed run logs the very means of an uninterrupted one)."""
        method = {**self.method.state_dict(), **{k: v.cpu() for k, v in self._totals.items()}}
        return {"stage": self.stage.name, "scheduler": self.scheduler.state_dict(), "trainer": self.state.state_dict(),
                "method": method, "ema": self.ema.state_dict() if self.ema is not None else None,
                "log_window": read_logs(self._logs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["stage"] != self.stage.name:
            raise FERBenchError(f"checkpoint of stage {state['stage']!r} found where stage {self.stage.name!r} "
                                "resumes")
        self.scheduler.load_state_dict(state["scheduler"])
        self.state.load_state_dict(state["trainer"])
        self.method.load_state_dict(state["method"])
        if self.accelerator.process_index > 0:  # a "sum" state's total is the first process's; the others add on
            for s in self.method.state_specs():
                if s.reduce == "sum":
                    setattr(self.method, s.name, torch.zeros_like(getattr(self.method, s.name)))
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        window = state.get("log_window")
        self._logs = {k: list(v) for k, v in (window or {}).items()}
        # a checkpoint written before windows were saved: the steps since its last log are not in the next means
        last_log = self.state.curves[-1]["step"] if self.state.curves else 0
        self._window_lost = 0 if window is not None else self.state.step - last_log

    # ---- the end ---------------------------------------------------------------------------------------------

    def finish(self) -> StageResult:
        """The finished stage: evaluated (when it evaluates and the last step's evaluation was not run in this
        session: resumed exactly at the end), summarised for the record."""
        if self.stage.evaluate and self.final_metrics is None:
            self.evaluate()
        trained = self.student
        images_per_s = round(self.state.images_seen / max(self.state.train_time_s, 1e-9), 1)
        st = self.state
        summary = {
            "name": self.stage.name,
            "iterations": self.cfg.train.iterations,
            "unlabeled_pool": len(self.data.unlabeled_pool) if self.stage.views else 0,
            "config": {k: self.cfg.to_dict()[k] for k in sorted(STAGE_SECTIONS)},
            "train_time_s": round(st.train_time_s, 3),
            "wall_time_s": round(st.wall_time_s, 3),
            "images_per_s": images_per_s,
            "last_logs": self.last_logs or (st.curves[-1] if st.curves else {}),
            "accuracy": self.final_metrics["accuracy"] if self.final_metrics else None,
            "start_checksum": self.start_checksum,
            "end_checksum": parameter_checksum(trained),
            "sessions": st.sessions,
            "performance": perf.performance_block(self.cfg, self.feed, self.accelerator.device, self.fused,
                                                  images_per_s),
        }
        return StageResult(trained, summary, st, self.final_metrics, self.stage, self.cfg, self.eval_model)


def read_logs(acc: dict[str, list[Any]]) -> dict[str, list[float]]:
    """Logged values as floats, the tensors among them copied to the host in one transfer."""
    tensors = [v for vs in acc.values() for v in vs if isinstance(v, torch.Tensor)]
    host = iter(torch.stack([t.double().reshape(()) for t in tensors]).cpu().tolist()) if tensors else iter(())
    return {k: [next(host) if isinstance(v, torch.Tensor) else float(v) for v in vs] for k, vs in acc.items()}


def share_buffers(model: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics), as DDP does at its next forward.

    Each process's forward updates the running statistics from its own batch, so without this the EMA model,
    which averages them, would differ from process to process: evaluation shards and methods that read the EMA
    model (Ada-CM's thresholds) would see several models."""
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def state_digest(state: Any) -> int:
    """A 63-bit digest of a state: nested dicts of tensors and values, in key order."""
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
    """Every process must hold the same "same" method state (counts, EMAs, thresholds) and the same EMA model
    buffers before rank 0's are saved as the run's: one line naming what differs and the step otherwise."""
    same = {s.name: getattr(method, s.name) for s in method.state_specs() if s.reduce == "same"}
    parts = {f"method {method.name!r}": same}
    if ema is not None:
        parts["the EMA model (its BatchNorm buffers)"] = dict(ema.module.named_buffers())
    mine = torch.tensor([state_digest(s) for s in parts.values()], dtype=torch.int64, device=accelerator.device)
    digests = accelerator.gather(mine[None]).tolist()  # processes x parts
    for k, what in enumerate(parts):
        if len({row[k] for row in digests}) > 1:
            fix = ("its state must be updated from statistics gathered across processes (StepContext.gather), or "
                   "declared reduce='sum'" if k == 0 else "BatchNorm statistics must be shared before the EMA update")
            raise FERBenchError(f"{where}: the state of {what} is not the same on the {len(digests)} processes "
                                f"at iteration {step}; {fix}")


def run_stage_loop(sr: StageRun, checkpoint_dir: Path, progress: Any = None,
                   should_stop: Any = None) -> StageResult | None:
    """Train `sr` to its end (its result) or until stopped (None, with a checkpoint saved at an iteration boundary
    so a later call resumes exactly there): step, then the decisions each step may bring, in order."""
    when = sr.cadence
    sr.resume(checkpoint_dir)
    task = progress.add_task(sr.label, total=when.total, completed=sr.state.step) if progress is not None else None
    sr.model.train()
    while sr.state.step < when.stop_at:
        sr.step()
        if should_stop is not None and should_stop():  # this process was signalled; the others learn of it
            sr.accelerator.set_trigger()  # at the next agreement point, so that all stop at the same step
        step, stopping = sr.state.step, False
        if when.agreement(step):
            sr.check_finite()
            stopping = should_stop is not None and sr.accelerator.check_trigger()
        if when.log(step):
            sr.log()
        if when.evaluate(step):
            sr.evaluate()
        if task is not None:
            last = sr.state.history[-1]["accuracy"] if sr.state.history else float("nan")
            progress.update(task, completed=step, description=f"{sr.label} acc={last:.3f}")
        if when.checkpoint(step, stopping):
            sr.save(checkpoint_dir)
        if stopping:
            break
    sr.close_session()
    sr.feed.close()
    if task is not None:
        progress.remove_task(task)
    return sr.finish() if sr.state.step >= when.total else None
