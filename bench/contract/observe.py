"""Watching a method train: what its steps read on the host, which views they were given and read, and the instance,
model and batch the contract's later checks look at. The watch wraps the method class's `training_step` and `setup`
for the length of one run (the engine is not changed), and never alters a value: a trapped host read still returns
what it would have."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bench.method import Batch, Method, SetupInfo, StepContext, StepOutput

#: the tensor methods that copy a value to the host (each waits for a GPU to finish the work queued before it)
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


class _ReadRecorder(dict):
    """A batch's dict of views that records which keys the method reads."""

    def __init__(self, values: dict[str, Tensor], reads: set[str]) -> None:
        super().__init__(values)
        self._reads = reads

    def __getitem__(self, key: str) -> Tensor:
        self._reads.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self._reads.add(key)
        return super().get(key, default)


@dataclass
class StageSeen:
    """What the steps of one stage were given and did."""

    labeled_given: set[str] = field(default_factory=set)
    unlabeled_given: set[str] = field(default_factory=set)
    labeled_read: set[str] = field(default_factory=set)
    unlabeled_read: set[str] = field(default_factory=set)
    steps: int = 0


@dataclass
class Observation:
    """Everything seen while one run trained."""

    host_reads: list[str] = field(default_factory=list)  # "item at step 3 (stage main)"
    stages: dict[str, StageSeen] = field(default_factory=dict)
    method: Method | None = None  # the instance that trained the last stage
    setup_info: SetupInfo | None = None
    model: nn.Module | None = None  # the model the last step trained
    batch: Batch | None = None  # the last step's batch (its tensors, as given)
    bad_outputs: list[str] = field(default_factory=list)  # what a step returned that is not a StepOutput's shape


def _trap(reads: list[str], where: str) -> dict[str, Any]:
    """Replacements of the host-read tensor methods that note `where` each read happened, then do it."""
    saved = {n: getattr(Tensor, n) for n in HOST_READS}

    def trap(name: str) -> Any:
        def read(t: Tensor, *a: Any, **k: Any) -> Any:
            reads.append(f"{name} at {where}")
            return saved[name](t, *a, **k)
        return read

    return {n: trap(n) for n in HOST_READS}


_ABSENT = object()  # an attribute `_patched` found inherited, not on the class itself


@contextlib.contextmanager
def _patched(owner: Any, replacements: dict[str, Any]) -> Iterator[None]:
    """Set attributes of `owner` for the block, restoring them (or removing them where `owner` only inherited)."""
    before = {n: owner.__dict__.get(n, _ABSENT) for n in replacements}
    try:
        for n, v in replacements.items():
            setattr(owner, n, v)
        yield
    finally:
        for n, v in before.items():
            if v is _ABSENT:
                delattr(owner, n)
            else:
                setattr(owner, n, v)



def _step_output_problem(out: Any) -> str | None:
    if not isinstance(out, StepOutput):
        return f"returned a {type(out).__name__}, not a StepOutput"
    if not isinstance(out.loss, Tensor) or out.loss.dim() != 0:
        return "its loss is not a 0-dim tensor"
    bad = [k for k, v in out.logs.items() if not (isinstance(v, (int, float)) or
                                                  (isinstance(v, Tensor) and v.dim() == 0 and not v.requires_grad))]
    return f"logs {', '.join(bad)} are not detached 0-dim tensors or numbers" if bad else None


@contextlib.contextmanager
def watching(cls: type[Method]) -> Iterator[Observation]:
    """Observe every `training_step` and `setup` of `cls` (and its subclasses' inherited ones) inside the block."""
    seen = Observation()
    real_step, real_setup = cls.training_step, cls.setup

    def setup(self: Method, info: SetupInfo) -> None:
        seen.setup_info = info
        real_setup(self, info)

    def training_step(self: Method, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        stage = seen.stages.setdefault(ctx.stage, StageSeen())
        stage.steps += 1
        stage.labeled_given |= set(batch.labeled)
        stage.unlabeled_given |= set(batch.unlabeled or {})
        watched = Batch(_ReadRecorder(batch.labeled, stage.labeled_read),
                        None if batch.unlabeled is None else _ReadRecorder(batch.unlabeled, stage.unlabeled_read))
        with _patched(Tensor, _trap(seen.host_reads, f"step {ctx.step} (stage {ctx.stage})")):
            out = real_step(self, model, watched, ctx)
        problem = _step_output_problem(out)
        if problem:
            seen.bad_outputs.append(f"step {ctx.step} (stage {ctx.stage}): {problem}")
        seen.method, seen.model, seen.batch = self, model, batch
        return out

    with _patched(cls, {"training_step": training_step, "setup": setup}):
        yield seen


def model_output_problem(model: nn.Module, images: Tensor, num_classes: int) -> str | None:
    """What is wrong with `model`'s evaluation output on `images` (eval mode, no gradients), or None: `model(x)` must be
    (N, C) logits, and `model(x, return_features=True)` a ModelOutput of (N, C) logits, (N, D) features, 0-dim aux."""
    from bench.method import ModelOutput

    n = images.shape[0]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(images)
            full = model(images, return_features=True)
    finally:
        model.train(was_training)
    if not isinstance(logits, Tensor) or tuple(logits.shape) != (n, num_classes):
        return f"model(x) gave {_shape(logits)} for {n} images; expected logits of shape ({n}, {num_classes})"
    if not isinstance(full, ModelOutput):
        return f"model(x, return_features=True) gave a {type(full).__name__}, not a ModelOutput"
    if tuple(full.logits.shape) != (n, num_classes) or full.features.dim() != 2 or full.features.shape[0] != n:
        return (f"model(x, return_features=True) gave logits {_shape(full.logits)} and features "
                f"{_shape(full.features)}; expected ({n}, {num_classes}) and ({n}, D)")
    if full.aux.dim() != 0:
        return f"its aux loss has shape {_shape(full.aux)}; expected a 0-dim tensor"
    if not torch.equal(logits, full.logits):
        return "model(x) and model(x, return_features=True).logits differ in eval mode"
    return None


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else f"a {type(t).__name__}"
