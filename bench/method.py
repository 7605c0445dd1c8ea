"""The method plugin contract: everything a method file imports (with `bench.registry`, `bench.errors` and torch).

A method holds only what is specific to it: its losses, thresholds and state. The engine gives it a batch whose
views it declared and a context; it returns the loss to minimise and scalars to log (the shape of Lightning's
`training_step`). It never sees file formats or data loading. A method declares:

- its **arguments** as a dataclass (`Args`, a `MethodArgs` subclass) whose annotations are the types and ranges
  the run config uses (`Probability`, `NonNegative`, `Literal[...]`, ...): checked before any work, with one-line
  errors, and listed by `ferbench methods` with their notes (`arg(default, note)`);
- its **state** once, with `add_state(name, default, reduce)`: the engine moves it to the device, saves and
  restores it strictly with every checkpoint, and checks at each checkpoint of a multi-process run that the
  processes agree (a method never writes `state_dict`, `load_state_dict` or `to`);
- its **model** by composing the engine's `FERModel` (`forward_features`, `forward_head(pre_logits=...)`,
  `head_input`, `get_classifier`, `feature_map`: timm's names and meaning) in `build_model`; every model answers
  `model(x)` with logits and `model(x, return_features=True)` with one `ModelOutput` (logits, features, aux).

A step should not read tensor values on the host (`.item()`, `if tensor:`, boolean indexing): on a GPU each
read waits for the device. Logs are returned as detached tensors, which the loop reads every `log_every`
iterations, and data-dependent subsets (a method's confident or unconfident samples) are masks over the whole
batch, not indexed selections. No built-in method's step reads anything (tested for each).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from torch import Tensor, nn

from bench.checks import Interval, check_value, describe
from bench.config import AreaFraction, Count, Decay, NonNegative, NonNegativeInt, Positive, Probability, TorchSeed
from bench.data.faceboxes import box_iou, box_provider
from bench.engine.pretrained import load_pretrained
from bench.errors import FERBenchError

__all__ = [  # the value types of arguments, and what the engine offers methods, re-exported for plugins
    "AreaFraction", "Count", "Decay", "Interval", "NonNegative", "NonNegativeInt", "Positive", "Probability",
    "TorchSeed", "box_iou", "box_provider", "load_pretrained",
]


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
    #: A method updates its "same" state (class counts, EMAs, thresholds, memory banks) from gathered statistics,
    #: as the reference code does under DDP, so every process holds the same state; the engine checks that it
    #: does at every checkpoint of a multi-process run.
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


@dataclass
class ProbeView:
    """Given to `Method.probe_state` by the fingerprint probe (bench/engine/probe.py): a classifier warmed on the
    probe's labeled pool, and its softmax on unaugmented views of the unlabeled pool (in pool order) and of the
    labeled pool, with the labels."""

    unlabeled_probs: Tensor  # (num_unlabeled, C)
    labeled_probs: Tensor  # (num_labeled, C)
    labels: Tensor  # (num_labeled,)


@dataclass(frozen=True)
class Stage:
    """One stage of a method's training: its own iterations, optimiser, schedule and views.

    Single-stage methods have one, "main", made from their class attributes. A multi-stage method
    (FR-pretraining: reconstruction, supervised fine-tuning, semi-supervised) lists several; the engine
    runs them in order, each with a fresh optimiser, schedule and EMA, checkpoints inside each, and
    hands the trained model of one stage to `Method.stage_model` of the next.

    defaults: section overrides this stage applies to the run config ({"optim": {...}, "train": {...},
              "augment": {...}}, applied as any config mapping); the user's `stages.<name>` overrides go on top.
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


class ModelOutput(NamedTuple):
    """What `model(x, return_features=True)` returns, for every model a method trains."""

    logits: Tensor  # (N, C)
    features: Tensor  # (N, D): what the method compares images by (the model's feature, e.g. L2-normalised)
    aux: Tensor  # 0-dim: a loss the model adds itself (LEAF's MoE balancing); zero when it has none


# ---- arguments ----------------------------------------------------------------------------------------------


@dataclass
class MethodArgs:
    """Base of a method's arguments: a dataclass whose field annotations are their types and ranges (as the run
    config's, bench/checks.py), with defaults. Subclass it, or another method's (LEAF's extend Ada-CM's)."""


def arg(default: Any = None, note: str = "", *, factory: Callable[[], Any] | None = None,
        reconstructed: bool = False, per_step_decay: bool = False) -> Any:
    """An argument field: its default, where that value comes from (`note`, shown by `ferbench methods`), whether
    it is a reconstruction rather than a value read in a paper or its code, and whether it is a per-step decay (an
    EMA momentum in [0, 1)), which the fingerprint probe puts on its own time scale as it does the model EMA's."""
    meta = {"note": note, "reconstructed": reconstructed, "per_step_decay": per_step_decay}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@functools.cache
def _argument_hints(args_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(args_cls, include_extras=True)


def parse_arguments(args_cls: type[MethodArgs], given: dict[str, Any], where: str) -> MethodArgs:
    """`args_cls` built from `given` (the run's `method_args`): an unknown name or a value of the wrong type or out
    of range is one line naming it; values are kept in their canonical form (ints of float arguments as floats)."""
    fields = {f.name: f for f in dataclasses.fields(args_cls)}
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise FERBenchError(f"{where}: unknown argument(s) {', '.join(unknown)}; "
                            f"accepted: {', '.join(sorted(fields)) or 'none'}")
    hints = _argument_hints(args_cls)
    return args_cls(**{k: check_value(v, hints[k], f"{where}: method_args.{k}") for k, v in given.items()})


def per_step_decays(args_cls: type[MethodArgs]) -> list[str]:
    """The arguments of `args_cls` declared per-step decays (`arg(..., per_step_decay=True)`)."""
    return [f.name for f in dataclasses.fields(args_cls) if f.metadata.get("per_step_decay")]


@dataclass(frozen=True)
class ArgumentInfo:
    name: str
    type: str  # in words, with its range: "a number in [0, 1]"
    default: Any
    note: str
    reconstructed: bool


def describe_arguments(args_cls: type[MethodArgs]) -> list[ArgumentInfo]:
    """Each argument of `args_cls`: name, type and range in words, default, note, whether reconstructed."""
    hints = _argument_hints(args_cls)
    out = []
    for f in dataclasses.fields(args_cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out.append(ArgumentInfo(f.name, describe(hints[f.name]), default, f.metadata.get("note", ""),
                                bool(f.metadata.get("reconstructed", False))))
    return out


# ---- state --------------------------------------------------------------------------------------------------

#: how a state tensor is combined across processes:
#:   "same"  every process holds the same value, updated from statistics gathered across processes
#:           (`StepContext.gather`); checked equal at every checkpoint, rank 0's saved, restored on every process;
#:   "sum"   each process holds its own part and the run's value is their sum (a count of what each saw): saved
#:           as the sum over processes, restored on the first process with zeros on the others, so the sum holds.
STATE_REDUCTIONS = ("same", "sum")


@dataclass(frozen=True)
class StateSpec:
    name: str
    reduce: Literal["same", "sum"]
    if_missing: Tensor | None  # its value for a checkpoint written before this state existed


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
    #: the method's arguments: a `MethodArgs` dataclass (types, ranges, defaults, notes)
    Args: ClassVar[type[MethodArgs]] = MethodArgs
    #: where the losses and defaults come from (paper, official code), shown by `ferbench methods`.
    reference: ClassVar[str] = ""
    #: the method trains against the EMA model (a teacher), so the run must keep one.
    requires_ema: ClassVar[bool] = False
    #: how the engine draws labeled batches: "uniform" (shuffled epochs over the labeled pool) or
    #: "class_balanced" (each draw picks a class uniformly, then a sample of it). An instance may set it
    #: from one of its arguments; the engine reads it from the instance.
    labeled_sampling: str = "uniform"
    #: every stage `stages()` may return, in order; `stages.<name>` overrides may name any of them (a preset
    #: may set a stage that some arguments skip, e.g. FR-pretraining's MAE stage when a checkpoint is given)
    stage_names: ClassVar[tuple[str, ...]] = ("main",)
    #: dotted config overrides for the contract checker's seconds-long runs (`ferbench check-method`), where its
    #: tiny defaults would leave the method's adaptive parts idle (thresholds no tiny model reaches in 12 steps)
    check_settings: ClassVar[dict[str, Any]] = {}

    def __init__(self, num_classes: int, **arguments: Any) -> None:
        self.args = parse_arguments(self.Args, arguments, f"method {self.name!r}")
        self.num_classes = num_classes
        self._state: dict[str, StateSpec] = {}

    @property
    def hparams(self) -> dict[str, Any]:
        """Every argument's value (defaults included), for the record."""
        return dataclasses.asdict(self.args)

    # -- state, declared once; the engine derives device moves, checkpoints and the agreement check from it --

    def add_state(self, name: str, default: Tensor, reduce: Literal["same", "sum"] = "same",
                  if_missing: Tensor | None = None) -> None:
        """Declare state tensor `name` (an attribute of the method from now on, which the method may reassign)."""
        if reduce not in STATE_REDUCTIONS:
            raise ValueError(f"state {name!r}: reduce={reduce!r}; expected one of {', '.join(STATE_REDUCTIONS)}")
        self._state[name] = StateSpec(name, reduce, if_missing)
        setattr(self, name, default)

    def state_specs(self) -> list[StateSpec]:
        return list(self._state.values())

    def undeclared_state(self) -> list[str]:
        """Attributes that hold tensors (directly, or in a list, tuple or dict) but are not declared state: a
        checkpoint would not keep them, so a resumed run would start them afresh."""

        def holds_tensor(v: Any) -> bool:
            items = v.values() if isinstance(v, dict) else v if isinstance(v, (list, tuple)) else (v,)
            return any(isinstance(x, Tensor) for x in items)

        return sorted(k for k, v in vars(self).items() if k not in self._state and holds_tensor(v))

    def state_dict(self) -> dict[str, Tensor]:
        """Every declared state tensor, on the host. A tensor attribute that is not declared would silently not be
        checkpointed: it is an error."""
        stray = self.undeclared_state()
        if stray:
            raise FERBenchError(f"method {self.name!r}: attribute(s) {', '.join(stray)} hold tensors but are not "
                                "declared state (Method.add_state), so a checkpoint would not keep them")
        return {name: getattr(self, name).detach().cpu().clone() for name in self._state}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore every declared state tensor, on the device it is on now; anything missing or extra is an error."""
        missing = [n for n, s in self._state.items() if n not in state and s.if_missing is None]
        extra = sorted(set(state) - set(self._state))
        if missing or extra:
            raise FERBenchError(f"method {self.name!r}: the checkpoint's method state does not fit it ("
                                + "; ".join(x for x in (missing and f"missing {', '.join(missing)}",
                                                        extra and f"unexpected {', '.join(extra)}") if x) + ")")
        for name, spec in self._state.items():
            value = state[name] if name in state else spec.if_missing
            setattr(self, name, value.to(getattr(self, name).device))

    def to(self, device: torch.device) -> Method:
        for name in self._state:
            setattr(self, name, getattr(self, name).to(device))
        return self

    # -- what a method may override ---------------------------------------------------------------------------

    @classmethod
    def probe_arguments(cls, arguments: dict[str, Any]) -> dict[str, Any]:
        """The arguments the behavioural-fingerprint probe (bench/engine/fingerprint.py) runs the method with, given
        a run's: the same, unless some cannot run on the probe's tiny model and generated images (files to load)."""
        return dict(arguments)

    def probe_state(self, view: ProbeView) -> None:
        """Put the declared state where a run in progress holds it, from the predictions in `view`, so that the
        fingerprint probe's few steps exercise the method's adaptive parts (class-wise thresholds, distribution
        estimates, per-sample memories) rather than their starting values. Only the probe calls it; a method
        whose state is live from the start (or that has none) leaves it as it is."""

    def setup(self, info: SetupInfo) -> None:
        """Allocate state whose size depends on the data (called before a checkpoint is restored)."""

    def build_model(self, model: nn.Module) -> nn.Module:
        """Wrap or extend the engine's model (a `FERModel`) with the method's own modules.

        Called once, after `setup` and before the optimiser, EMA and checkpoint are made, so new
        parameters are trained, averaged, saved and evaluated like the backbone's. The result must keep
        `forward(x, return_features=False)`: logits, or a `ModelOutput`; in eval mode its logits are
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


# ---- forwards -----------------------------------------------------------------------------------------------


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP / DeepSpeed wrapper: where a method's `build_model` modules live."""
    return getattr(model, "module", model)


#: attribute of the (unwrapped) model the engine sets from `train.forward`
FORWARD_BATCHING_ATTR = "forward_batching"


def set_forward_batching(model: nn.Module, mode: str) -> None:
    """How `forward_parts` runs this model: "joint" (one forward over all parts) or "separate" (one per part)."""
    setattr(unwrap_model(model), FORWARD_BATCHING_ATTR, mode)


def forward_parts(model: nn.Module, *parts: Tensor) -> list[ModelOutput]:
    """The model's output for each part (the labeled batch, then each unlabeled view).

    "joint" (the harness, USB): one forward over the parts concatenated, so BatchNorm normalises them together,
    and logits and features are split back into parts. "separate" (the Ada-CM lineage, `train.forward`): one
    forward per part, in order, so BatchNorm normalises each with its own statistics. The auxiliary loss belongs
    to the forward that made it: joint gives it to the first part and zeros to the others, so summing it over the
    parts means the same in both modes.
    """
    if getattr(unwrap_model(model), FORWARD_BATCHING_ATTR, "joint") == "separate":
        return [model(p, return_features=True) for p in parts]
    out = model(torch.cat(parts), return_features=True)
    sizes = [len(p) for p in parts]
    logits, features = out.logits.split(sizes), out.features.split(sizes)
    return [ModelOutput(logits[i], features[i], out.aux if i == 0 else torch.zeros_like(out.aux))
            for i in range(len(parts))]


def joint_forward(model: nn.Module, labeled: Tensor, *unlabeled: Tensor,
                  return_features: bool = False) -> tuple[Tensor, ...]:
    """The logits of the labeled batch and of every unlabeled view (labeled first), from one forward over all
    of them or one per part (`forward_parts`); with `return_features`, the features of each part follow."""
    outs = forward_parts(model, labeled, *unlabeled)
    logits = tuple(o.logits for o in outs)
    return (*logits, *(o.features for o in outs)) if return_features else logits


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


# ---- what the engine offers methods -------------------------------------------------------------------------


def masked_autoencoder(encoder: nn.Module, decoder_dim: int, decoder_depth: int, decoder_heads: int,
                       mask_ratio: float) -> nn.Module:
    """A masked autoencoder around a timm ViT `encoder` (bench/engine/mae.py): `model(x)` gives (loss, pred,
    mask) with the pixel MSE on the masked patches; its trained encoder is `.encoder`."""
    from bench.engine.mae import MaskedAutoencoder

    return MaskedAutoencoder(encoder, decoder_dim, decoder_depth, decoder_heads, mask_ratio)
