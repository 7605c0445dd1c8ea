"""The method plugin contract.

A method holds only what is specific to it: its losses, thresholds and state. The engine gives it a
batch whose views it declared and a context; it returns the loss to minimise and scalars to log
(the shape of Lightning's `training_step`). It never sees file formats or data loading.

A step should not read tensor values on the host (`.item()`, `if tensor:`, boolean indexing): on a GPU each
read waits for the device. Logs are returned as detached tensors, which the loop reads every `log_every`
iterations, and data-dependent subsets (a method's confident or unconfident samples) are masks over the whole
batch, not indexed selections. No built-in method's step reads anything (tested for each).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bench.checks import argument_hint, check_value
from bench.errors import FERBenchError


@dataclass
class Batch:
    """Augmented, normalised float images by view name, plus labels and dataset indices.

    labeled:   {"weak": (B,3,H,W), "y": (B,), "idx": (B,), "pos": (B,)} and any other declared labeled
               views; "idx" indexes the training set, "pos" is the position in the labeled pool, in
               [0, num_labeled) (for per-labeled-sample state such as SIT-FER's memory bank).
    unlabeled: {view: (mu*B,3,H,W) for view in Method.views} and "idx": (mu*B,) (indices into the
               unlabeled pool, for methods with per-sample state); None when views is empty.
    """

    labeled: dict[str, Tensor]
    unlabeled: dict[str, Tensor] | None = None


def this_process_only(t: Tensor) -> Tensor:
    return t


@dataclass
class StepContext:
    step: int  # 0-based iteration being trained
    total_steps: int
    num_classes: int
    ema_model: nn.Module | None = None  # the EMA (teacher) model when the run keeps one
    stage: str = "main"
    #: maps a normalised view back to uint8 pixels (N, 3, H, W), for methods that look at the images
    denormalize: Callable[[Tensor], Tensor] | None = None
    #: every process's rows of a per-sample tensor, concatenated (the tensor itself in a one-process run).
    #: A method updates its state (class counts, EMAs, thresholds, memory banks) from gathered statistics, as the
    #: reference code does under DDP, so every process holds the same state; the engine checks that it does at
    #: every checkpoint of a multi-process run.
    gather: Callable[[Tensor], Tensor] = this_process_only


@dataclass
class SetupInfo:
    """What a method may size its state by; given once, before any checkpoint is loaded."""

    num_classes: int
    num_labeled: int
    num_unlabeled: int  # unlabeled indices in Batch.unlabeled["idx"] lie in [0, num_unlabeled)
    total_steps: int


@dataclass
class HookContext:
    """Given to `Method.on_hook` every `hook_every()` iterations (e.g. Ada-CM's per-epoch thresholds)."""

    step: int  # iterations completed
    epoch: int  # completed hook intervals, 1-based
    #: (probs (N, C), labels (N,)) of the evaluation model (EMA when kept) on weak views of the labeled set
    predict_labeled: Callable[[], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Stage:
    """One stage of a method's training: its own iterations, optimiser, schedule and views.

    Single-stage methods have one, "main", made from their class attributes. A multi-stage method
    (FR-pretraining: reconstruction, supervised fine-tuning, semi-supervised) lists several; the engine
    runs them in order, each with a fresh optimiser, schedule and EMA, checkpoints inside each, and
    hands the trained model of one stage to `Method.stage_model` of the next.

    defaults: section overrides this stage applies to the run config ({"optim": {...}, "train": {...},
              "augment": {...}}); the user's `stages.<name>` overrides go on top.
    evaluate: whether the stage's model is a classifier to evaluate on the test split (the run's metrics
              are those of the last stage that evaluates).
    extra_unlabeled: image folders whose images join the unlabeled pool for this stage only.
    """

    name: str
    views: tuple[str, ...] = ()
    labeled_views: tuple[str, ...] = ("weak",)
    defaults: dict[str, Any] = field(default_factory=dict)
    evaluate: bool = True
    extra_unlabeled: tuple[str, ...] = ()
    requires_ema: bool = False  # the stage trains against the EMA model (a teacher)


@dataclass
class StepOutput:
    """The loss to minimise, and scalars to log: detached 0-dim tensors (or Python numbers). The loop reads the
    tensors on the host only every `log_every` iterations, so a step never waits for the accelerator."""

    loss: Tensor
    logs: dict[str, Tensor | float] = field(default_factory=dict)


class Method:
    """Base class of method plugins; subclasses register with `@register_method(name)`."""

    name: ClassVar[str] = ""
    #: views the unlabeled stream must carry, e.g. ("weak", "strong"); () = no unlabeled stream.
    #: A view is named by its kind ("weak" or "strong") with an optional suffix ("weak2"); each
    #: name is an independent draw.
    views: ClassVar[tuple[str, ...]] = ()
    labeled_views: ClassVar[tuple[str, ...]] = ("weak",)
    #: "subset": the labeled split of the budget; "all": every training label (reference row).
    labeled_source: ClassVar[str] = "subset"
    defaults: ClassVar[dict[str, Any]] = {}
    #: where the losses and defaults come from (paper, official code), shown by `ferbench methods`.
    reference: ClassVar[str] = ""
    #: the method trains against the EMA model (a teacher), so the run must keep one.
    requires_ema: ClassVar[bool] = False
    #: how the engine draws labeled batches: "uniform" (shuffled epochs over the labeled pool) or
    #: "class_balanced" (each draw picks a class uniformly, then a sample of it). An instance may set it
    #: from one of its arguments; the engine reads it from the instance.
    labeled_sampling: str = "uniform"
    #: names of `defaults` that are reconstructions, not values from a paper or its code (listed by
    #: `ferbench methods`, so they can be corrected when the source becomes available).
    reconstructed: ClassVar[tuple[str, ...]] = ()
    #: every stage `stages()` may return, in order; `stages.<name>` overrides may name any of them (a preset
    #: may set a stage that some arguments skip, e.g. FR-pretraining's MAE stage when a checkpoint is given)
    stage_names: ClassVar[tuple[str, ...]] = ("main",)
    #: ranges of numeric arguments in interval notation ("[0, 1]", "(0, inf)"), checked with their types
    argument_ranges: ClassVar[dict[str, str]] = {}
    #: types of arguments their default does not tell (a None default), e.g. {"text_seed": int | None};
    #: every other argument must have its default's type (an int default takes integers only)
    argument_types: ClassVar[dict[str, Any]] = {}

    def __init__(self, num_classes: int, **hparams: Any) -> None:
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            raise FERBenchError(
                f"method {self.name!r}: unknown argument(s) {', '.join(unknown)}; "
                f"accepted: {', '.join(sorted(self.defaults)) or 'none'}"
            )
        for key, value in hparams.items():
            hint = argument_hint(self.defaults[key], self.argument_types.get(key), self.argument_ranges.get(key))
            hparams[key] = check_value(value, hint, f"method {self.name!r}: method_args.{key}")
        self.num_classes = num_classes
        self.hparams: dict[str, Any] = {**self.defaults, **hparams}

    def choice(self, key: str, allowed: tuple[Any, ...]) -> Any:
        """The value of argument `key`, checked against `allowed` (one clear error line otherwise)."""
        value = self.hparams[key]
        if value not in allowed:
            raise FERBenchError(f"method {self.name!r}: {key}={value!r}; expected one of "
                                f"{', '.join(repr(a) for a in allowed)}")
        return value

    def setup(self, info: SetupInfo) -> None:
        """Allocate state whose size depends on the data (called before a checkpoint is restored)."""

    def build_model(self, model: nn.Module) -> nn.Module:
        """Wrap or extend the engine's model (a `FERModel`) with the method's own modules.

        Called once, after `setup` and before the optimiser, EMA and checkpoint are made, so new
        parameters are trained, averaged, saved and evaluated like the backbone's. The result must keep
        `forward(x, return_features=False)`: logits, or (logits, features); in eval mode its logits are
        what the run is evaluated on.
        """
        return model

    def stages(self) -> tuple[Stage, ...]:
        """The stages to train, in order; one ("main") unless a method overrides this."""
        return (Stage("main", views=self.views, labeled_views=self.labeled_views),)

    def stage_model(self, stage: Stage, model: nn.Module, previous: nn.Module | None) -> nn.Module:
        """The model `stage` trains. `model` is a freshly built `FERModel`; `previous` is the model the
        previous stage trained (None for the first). Single-stage methods get `build_model(model)`."""
        return self.build_model(model) if previous is None else previous

    def info(self) -> dict[str, Any]:
        """Facts about the run that are not arguments (e.g. which text encoder was loaded), for the record."""
        return {}

    def training_step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        raise NotImplementedError

    def hook_every(self) -> int | None:
        """Iterations between `on_hook` calls; None for no hook."""
        return None

    def on_hook(self, ctx: HookContext) -> None:
        """Periodic work outside the training step (e.g. thresholds from the labeled set)."""

    def state_dict(self) -> dict[str, Any]:
        """State that must survive checkpoint/resume (class counts, EMAs of confidence, ...)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise FERBenchError(f"method {self.name!r} has no state, but a checkpoint gave {sorted(state)}")

    def to(self, device: torch.device) -> Method:
        """Move tensor state to `device` (called by the engine after placement)."""
        return self


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP / DeepSpeed wrapper: where a method's `build_model` modules live."""
    return getattr(model, "module", model)


#: attribute of the (unwrapped) model the engine sets from `train.forward`
FORWARD_BATCHING_ATTR = "forward_batching"


def set_forward_batching(model: nn.Module, mode: str) -> None:
    """How `forward_parts` runs this model: "joint" (one forward over all parts) or "separate" (one per part)."""
    setattr(unwrap_model(model), FORWARD_BATCHING_ATTR, mode)


def forward_parts(model: nn.Module, *parts: Tensor, **kwargs: Any) -> list[tuple[Tensor, ...]]:
    """The model's outputs for each part (the labeled batch, then each unlabeled view), as tuples.

    "joint" (the harness, USB): one forward over the parts concatenated, so BatchNorm normalises them together,
    and every batch-sized output is split back into parts. "separate" (the Ada-CM lineage, `train.forward`): one
    forward per part, in order, so BatchNorm normalises each with its own statistics. An output that is not per
    sample (a 0-dim loss) belongs to the forward that made it: joint gives it to the first part and zeros to the
    others, so summing it over the parts means the same in both modes.
    """
    def as_tuple(out: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return out if isinstance(out, tuple) else (out,)

    if getattr(unwrap_model(model), FORWARD_BATCHING_ATTR, "joint") == "separate":
        return [as_tuple(model(p, **kwargs) if kwargs else model(p)) for p in parts]
    inputs = torch.cat(parts)
    outs = as_tuple(model(inputs, **kwargs) if kwargs else model(inputs))  # plain call: no keyword needed
    sizes = [len(p) for p in parts]
    split = [o.split(sizes) if o.ndim and len(o) == len(inputs) else
             (o, *(torch.zeros_like(o) for _ in sizes[1:])) for o in outs]
    return [tuple(s[i] for s in split) for i in range(len(parts))]


def joint_forward(model: nn.Module, labeled: Tensor, *unlabeled: Tensor,
                  return_features: bool = False) -> tuple[Tensor, ...]:
    """The logits of the labeled batch and of every unlabeled view (labeled first), from one forward over all
    of them or one per part (`forward_parts`); with `return_features`, the features of each part follow."""
    if not return_features:
        return tuple(out[0] for out in forward_parts(model, labeled, *unlabeled))
    outs = forward_parts(model, labeled, *unlabeled, return_features=True)
    return (*(o[0] for o in outs), *(o[1] for o in outs))


def weak_strong_forward(model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
    """The FixMatch family's forward: (CE on the labeled weak view, detached float softmax of the
    unlabeled weak view, logits of the unlabeled strong view). What each method does with them is its own.
    """
    x, y = batch.labeled["weak"], batch.labeled["y"]
    logits_x, logits_uw, logits_us = joint_forward(model, x, batch.unlabeled["weak"], batch.unlabeled["strong"])
    probs_weak = torch.softmax(logits_uw.detach().float(), dim=-1)
    return nn.functional.cross_entropy(logits_x, y), probs_weak, logits_us


def cross_entropy_masked_mean(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """mean_b mask_b * CE(logits_b, targets_b): FixMatch-style, averaged over the whole batch."""
    return (nn.functional.cross_entropy(logits, targets, reduction="none") * mask).mean()


#: the per-module statistics a BatchNorm forward in training mode updates
BN_STAT_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@contextmanager
def frozen_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers of `module` keep their running statistics through the forwards inside the block.

    Normalisation itself is unchanged (a layer in training mode still uses the batch's statistics); only the
    running mean, variance and batch count are left as they were, like USB's `Bn_Controller.freeze_bn`/
    `unfreeze_bn` (which covers BatchNorm2d and SyncBatchNorm; here every `_BatchNorm`). Each layer trains on
    copies of its buffers that are dropped on exit, and the original tensors are put back untouched: restoring
    values in place would bump their version and break the backward of an earlier forward that saved them.
    Nothing is read on the host.
    """
    saved: list[tuple[nn.Module, str, Tensor]] = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for name in BN_STAT_BUFFERS:
                buf = getattr(m, name, None)
                if isinstance(buf, Tensor):
                    saved.append((m, name, buf))
                    setattr(m, name, buf.clone())
    try:
        yield
    finally:
        for m, name, buf in saved:
            setattr(m, name, buf)
