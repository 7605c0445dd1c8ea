"""Typed run config: dataclasses, loaded from YAML files and dotted command-line overrides.

A run is fully described by a `RunConfig`. Its resolved form (`to_dict`) is what the run id hashes
and what the run record stores, so two runs with the same resolved config are the same run.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import typing
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from bench.bundles import check_recipe, get_preset, get_recipe
from bench.checks import Interval, check_fields, check_value
from bench.errors import FERBenchError
from bench.yamlfile import load_yaml, parse_yaml

__all__ = ["load_yaml", "parse_yaml"]  # re-exported: config files are read through this module

# Value types of config fields, checked when a config is built (bench/checks.py): `key=value: expected ...`.
Positive = Annotated[float, Interval("(0, inf)")]
NonNegative = Annotated[float, Interval("[0, inf)")]
Probability = Annotated[float, Interval("[0, 1]")]
Decay = Annotated[float, Interval("[0, 1)")]
Count = Annotated[int, Interval("[1, inf)")]
NonNegativeInt = Annotated[int, Interval("[0, inf)")]
AreaFraction = Annotated[float, Interval("(0, 1]")]
# an image side, everywhere one is given: prepared images are held decoded (N x side^2 x 3 bytes), so a side over
# 1024 is a typo (1120 for 112) that would fill the disk before it failed
ImageSide = Annotated[int, Interval("[8, 1024]")]
#: a seed torch's generators take as it is (`torch.Generator.manual_seed`: a signed or unsigned 64-bit integer)
TorchSeed = Annotated[int, Interval("[-9223372036854775808, 18446744073709551616)")]

# Enumerations, in one place (the engine modules import them from here).
BUDGET_PROTOCOLS = ("fraction", "total", "per_class")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "halfcosine", "constant")
MIXED_PRECISION = ("no", "fp16", "bf16")
COMPILE_MODES = ("none", "default", "reduce-overhead")
AUGMENT_ON = ("device", "cpu")
WEAK_CROPS = ("pad", "resized")
HEADS = ("linear", "normalized")
FORWARD_BATCHING = ("joint", "separate")
EMA_WALKS = ("tensors", "state_dict")
EMA_WARMUPS = ("copy", "none")
EMA_BUFFERS = ("average", "copy")
PAD_ROUNDINGS = ("nearest", "floor")
AUGMENT_OPS = ("harness", "pil")
PAD_MODES = ("reflect", "zeros")
CHANNEL_ORDERS = ("rgb", "bgr")
STRONG_ORDERS = ("randaugment_first", "weak_first")
TRACKERS = ("tensorboard", "wandb", "mlflow")


# How a field takes part in the run id, declared on the field itself (`run_id` in its metadata):
#   hashed            in the run id: it decides what is computed;
#   hashed_when_set   in the run id only when it differs from its default: fields added after results were
#                     published, so every earlier run keeps its id and a non-default value still makes a new run;
#   unhashed          never: where things go, how fast and how the run is watched (the same run on the fast or the
#                     classic data path is the same run; the record's `performance` block says which made it).
RUN_ID = "run_id"


def _declared(how: str, default: Any, factory: Callable[[], Any] | None) -> Any:
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={RUN_ID: how})
    return dataclasses.field(default=default, metadata={RUN_ID: how})


def hashed(default: Any = None, *, factory: Callable[[], Any] | None = None) -> Any:
    return _declared("hashed", default, factory)


def hashed_when_set(default: Any = None, *, factory: Callable[[], Any] | None = None) -> Any:
    return _declared("hashed_when_set", default, factory)


def unhashed(default: Any = None, *, factory: Callable[[], Any] | None = None) -> Any:
    return _declared("unhashed", default, factory)


@dataclass
class DataConfig:
    # the dataset: synthfer, rafdb, affectnet7, affectnet8, ferplus (`ferbench data prepare`)
    name: str = hashed("synthfer")
    root: str | None = unhashed(None)  # raw dataset folder; synthfer is generated into the cache when None
    # how `budget` counts labels: a fraction of the training set, a total, or per class
    protocol: Literal[BUDGET_PROTOCOLS] = hashed("fraction")
    budget: float = hashed(0.1)  # its range depends on the protocol: bench/data/splits.py check_budget
    image_size: ImageSide = hashed(48)  # the side images are stored and trained at (prepared once per size)
    # "all": every training image is also unlabeled (USB); "rest": the others
    unlabeled: Literal["all", "rest"] = hashed("all")
    cache_dir: str | None = unhashed(None)  # default: $FERBENCH_CACHE or ~/.cache/ferbench
    # an unreadable image: stop with its path, or leave it out (counted in the record)
    on_bad_image: Literal["fail", "skip"] = hashed("fail")
    # synthfer's generator: images per split, its seed and difficulty knobs
    synthfer: dict[str, Any] = hashed(factory=lambda: {"n_train": 6000, "n_test": 1500, "seed": 0})
    # the dataset's label rule (ferplus: majority8 | argmax7); None: its default
    label_protocol: str | None = hashed(None)
    options: dict[str, Any] = hashed(factory=dict)  # reader options (rafdb images, ferplus train_with_valid)
    # Where views are made (bench/engine/feed.py): "device" (batched on the accelerator, images held there
    # when they fit in `device_cache_gb`) or "cpu" (on the host, in `workers` background processes).
    augment_on: Literal[AUGMENT_ON] = unhashed("device")
    device_cache_gb: NonNegative | None = unhashed(None)  # None: half the accelerator's free memory; 0: always stream
    workers: NonNegativeInt = unhashed(0)  # augment_on=cpu: DataLoader worker processes making future steps' views

    def reader_options(self) -> dict[str, Any]:
        """What the dataset's reader takes: synthfer's generator parameters, else `options`."""
        return dict(self.synthfer) if self.name == "synthfer" else dict(self.options)


@dataclass
class ModelConfig:
    # a timm model name (FERBench's own small CNNs are registered there too)
    backbone: str = hashed("ferbench_cnn_small")
    pretrained_file: str | None = hashed(None)  # local checkpoint only; never a hub download
    drop_rate: Decay = hashed(0.0)  # dropout before the classifier
    # "linear": features -> dropout -> linear. "normalized": the Ada-CM lineage's head, features -> dropout ->
    # L2-normalise -> linear, whose forward returns that normalised feature
    # (docs/concepts/methods.md#the-ada-cm-code-lineage).
    head: Literal[HEADS] = hashed_when_set("linear")
    # extra timm.create_model arguments (img_size, ...)
    timm_kwargs: dict[str, Any] = hashed_when_set(factory=dict)


@dataclass
class OptimConfig:
    name: Literal[OPTIMIZERS] = hashed("sgd")  # the optimiser
    lr: Positive = hashed(0.03)  # peak learning rate, for the global batch
    momentum: Decay = hashed(0.9)  # SGD momentum
    nesterov: bool = hashed(True)  # SGD's Nesterov momentum
    weight_decay: NonNegative = hashed(5e-4)  # L2 weight decay (decoupled for adamw)
    # cosine: FixMatch's cos(7*pi*k / 16K); halfcosine: to min_lr
    schedule: Literal[SCHEDULES] = hashed("cosine")
    warmup_iters: NonNegativeInt = hashed(0)  # linear warm-up from 0 over this many iterations
    betas: tuple[Decay, Decay] = hashed_when_set((0.9, 0.999))  # adam / adamw
    min_lr: NonNegative = hashed_when_set(0.0)  # halfcosine: the floor it decays to
    # halfcosine: iterations of the decay, then min_lr; 0 = the whole run (or stage)
    decay_iters: NonNegativeInt = hashed_when_set(0)


@dataclass
class AugmentConfig:
    crop_prob: Probability = hashed(1.0)  # probability of the padded random crop in the weak view
    pad_frac: Annotated[float, Interval("[0, 1)")] = hashed(0.125)  # padding as a fraction of the image side
    randaugment_n: NonNegativeInt = hashed(3)  # ops per strong view (sampled with replacement)
    cutout_max: Probability = hashed(0.5)  # cutout side ~ U(0, cutout_max) * image side
    crop: Literal[WEAK_CROPS] = hashed_when_set("pad")  # weak-view crop: padded random crop | RandomResizedCrop
    # crop="resized": range of the crop's area fraction
    rrc_scale: tuple[AreaFraction, AreaFraction] = hashed_when_set((0.08, 1.0))
    # RandAugment and Cutout op semantics: "pil" = PIL's, as the reference code applies them to PIL images
    # (fill 0, shear about the top-left corner, posterize int(U(4, 8)) bits, cutout including its end pixel);
    # "harness" = grey fill 128, shear about the centre, posterize 4..8 bits, cutout excluding its end pixel.
    ops: Literal[AUGMENT_OPS] = hashed_when_set("harness")
    # the weak crop's padding: reflect (USB) | zeros (torchvision's default)
    pad_mode: Literal[PAD_MODES] = hashed_when_set("reflect")
    # the padding in pixels from pad_frac * side: "nearest" (the Ada-CM lineage's 8 px at 224 = 8/224 of the side)
    # or "floor" (USB's int(side * (1 - crop_ratio)): 5 px at 44, where "nearest" gives 6)
    pad_rounding: Literal[PAD_ROUNDINGS] = hashed_when_set("nearest")
    # Resize every view (evaluation's too) to this side after RandAugment and Cutout and before the weak crop, as
    # the Ada-CM lineage's Resize(224) of its 100x100 faces; None: views keep the stored data.image_size.
    resize_to: ImageSide | None = hashed_when_set(None)
    # "bgr": the network sees BGR (cv2.imread without conversion)
    channels: Literal[CHANNEL_ORDERS] = hashed_when_set("rgb")
    # The strong view: "randaugment_first" = RandAugment + Cutout, then the weak pipeline (the Ada-CM lineage);
    # "weak_first" = the weak crop and flip, then RandAugment + Cutout (USB's transform_strong).
    strong_order: Literal[STRONG_ORDERS] = hashed_when_set("randaugment_first")
    # per-channel mean subtracted from every view (ImageNet's)
    normalize_mean: tuple[float, float, float] = hashed((0.485, 0.456, 0.406))
    # per-channel standard deviation every view is divided by (ImageNet's)
    normalize_std: tuple[Positive, Positive, Positive] = hashed((0.229, 0.224, 0.225))


@dataclass
class TrainConfig:
    iterations: Count = hashed(1000)  # optimiser steps of the run (of each stage, unless `stages` says otherwise)
    batch_size: Count = hashed(32)  # global labeled batch (all processes together)
    mu: NonNegativeInt = hashed(3)  # unlabeled batch = mu * batch_size
    ema_decay: Decay = hashed(0.999)  # 0 disables the EMA model
    # evaluate on the test set every this many iterations (curves only: ranking uses the final checkpoint)
    eval_every: Count = hashed(100)
    log_every: Count = unhashed(10)  # log losses and learning rate every this many iterations
    checkpoint_every: Count = unhashed(200)  # write a resumable checkpoint every this many iterations
    mixed_precision: Literal[MIXED_PRECISION] = hashed("no")  # no | bf16 | fp16: autocast through Accelerate
    channels_last: bool = unhashed(False)  # model and views in NHWC memory layout (faster convolutions on GPUs)
    compile: Literal[COMPILE_MODES] = unhashed("none")  # torch.compile's mode; reduce-overhead = CUDA graphs
    fused_optimizer: bool = unhashed(True)  # torch's fused optimiser kernels where available (CUDA); recorded
    stop_after: Count | None = unhashed(None)  # stop (checkpointed) at this iteration: a simulated interruption
    # "joint": one forward over the labeled batch and every unlabeled view (USB); "separate": one forward per
    # part, so BatchNorm normalises each with its own statistics (the Ada-CM lineage).
    forward: Literal[FORWARD_BATCHING] = hashed_when_set("joint")
    # How the EMA model is updated: "tensors" = each parameter and buffer once (timm's ModelEmaV3); "state_dict" =
    # once per state_dict() entry, as the Ada-CM lineage's WeightEMA, so a module registered k times (LEAF's
    # shared expert) is averaged k times per step.
    ema_walk: Literal[EMA_WALKS] = hashed_when_set("tensors")
    # The Ada-CM lineage's "customised weight decay": after each EMA update, every float state_dict() entry of the
    # student is multiplied by (1 - student_decay * lr) (the code's 0.02); 0 = off.
    student_decay: NonNegative = hashed_when_set(0.0)
    # The EMA's first updates: "copy" = the student itself at the first two (timm's ModelEmaV3 rule, the harness's
    # choice); "none" = ema_decay from the first update on (the official codes: Ada-CM/LEAF's WeightEMA, USB's EMA,
    # SSFER's timm ModelEma).
    ema_warmup: Literal[EMA_WARMUPS] = hashed_when_set("copy")
    # The EMA model's float buffers (BatchNorm running statistics): "average" them like the weights (timm, the
    # lineage's WeightEMA) or "copy" the student's at every update (USB: only parameters have a shadow).
    ema_buffers: Literal[EMA_BUFFERS] = hashed_when_set("average")
    # Experiment trackers the main process logs to (bench/engine/trackers.py): one tracker run per FERBench run, named
    # by its run id and continued across resumes; a tracker that fails is one warning, never the run's end
    trackers: list[Literal[TRACKERS]] = unhashed(factory=lambda: ["tensorboard"])
    # W&B project and MLflow experiment, unless $WANDB_PROJECT / $MLFLOW_EXPERIMENT_NAME says otherwise; None: the
    # sweep's name, else "ferbench"
    tracker_project: str | None = unhashed(None)
    tracker_group: str | None = unhashed(None)  # the runs' group (W&B group): a sweep sets its name


@dataclass
class RunConfig:
    method: str = hashed("fixmatch")  # a registered method (`ferbench methods`)
    # the protocol: "harness" (one substrate for every method) or a reference recipe (bench/configs/recipes/<name>.yaml)
    recipe: str = hashed_when_set("harness")
    preset: str | None = hashed(None)  # a named bundle of values (bench/configs/presets/<name>.yaml)
    seed: NonNegativeInt = hashed(0)  # the training seed (and the split seed unless `split_seed` is set)
    split_seed: NonNegativeInt | None = hashed(None)  # defaults to seed: seed i fixes both the split and the training
    # the method's own arguments, checked against its `Args` (`ferbench methods NAME`)
    method_args: dict[str, Any] = hashed(factory=dict)
    data: DataConfig = hashed(factory=DataConfig)
    model: ModelConfig = hashed(factory=ModelConfig)
    optim: OptimConfig = hashed(factory=OptimConfig)
    augment: AugmentConfig = hashed(factory=AugmentConfig)
    train: TrainConfig = hashed(factory=TrainConfig)
    #: per-stage overrides of multi-stage methods: {stage name: {"optim"|"train"|"augment": {...}}}; each section's
    #: keys take part in the run id as their fields do
    stages: dict[str, Any] = hashed_when_set(factory=dict)
    output_dir: str = unhashed("runs")  # where records and run folders go

    @property
    def effective_split_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: the config sections a stage's overrides may set (`stages.<name>.<section>`, `Stage.defaults`)
STAGE_SECTIONS = {"optim": OptimConfig, "train": TrainConfig, "augment": AugmentConfig}


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _as_lists(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


@functools.cache
def _sections(cls: type) -> dict[str, type]:
    """The fields of dataclass `cls` that are config sections (dataclasses themselves), by name."""
    return {name: hint for name, hint in typing.get_type_hints(cls).items() if dataclasses.is_dataclass(hint)}


def _identity(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """`values` (a `to_dict()` section of dataclass `cls`) with only what its fields declare part of the run id."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        how, v = f.metadata[RUN_ID], values[f.name]
        if f.name in _sections(cls):
            v = _identity(_sections(cls)[f.name], v)
        elif cls is RunConfig and f.name == "stages":
            v = _stage_identity(v)
        if how == "unhashed" or (how == "hashed_when_set" and _as_lists(v) == _as_lists(_default(f))):
            continue
        out[f.name] = v
    return out


def _stage_identity(stages: Any) -> Any:
    """Per stage, each section's values that are part of the run id (the same watch settings stay out)."""
    if not isinstance(stages, dict):
        return stages
    out = {}
    for name, sections in stages.items():
        if not isinstance(sections, dict):
            continue
        kept = {sec: (_identity(STAGE_SECTIONS[sec], vals) if sec in STAGE_SECTIONS and isinstance(vals, dict)
                      else vals) for sec, vals in sections.items()}
        kept = {sec: vals for sec, vals in kept.items() if vals != {}}
        if kept:
            out[name] = kept
    return out


def identity_values(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config's values that take part in the run id (what the run is, never how it is watched)."""
    return _identity(RunConfig, cfg.to_dict())


def config_hash(cfg: RunConfig) -> str:
    """sha256 of the resolved config: the fields that declare themselves part of the run id, with the dataset's
    defaults spelled out (run ids carry its first 10 hex digits)."""
    resolved = identity_values(cfg)
    if cfg.data.name == "synthfer":  # the generator's defaults and version decide the data: hash them too
        from bench.data.synthfer import resolved_params

        resolved["data"]["synthfer"] = resolved_params(**cfg.data.synthfer)
    from bench.data.datasets import get_dataset

    spec = get_dataset(cfg.data.name)  # defaults spelled out or left implicit name the same run
    resolved["data"]["label_protocol"] = spec.protocol(cfg.data.label_protocol)
    resolved["data"]["options"] = spec.resolve_options(cfg.data.options)
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()


def run_id(cfg: RunConfig) -> str:
    """Readable prefix + a hash of the resolved config (`config_hash`)."""
    from bench.data.datasets import get_dataset

    spec = get_dataset(cfg.data.name)
    digest = config_hash(cfg)[:10]
    budget = f"{cfg.data.budget:g}"
    method = cfg.method if cfg.recipe == "harness" else f"{cfg.method}-{cfg.recipe}"  # a recipe names its runs
    return f"{method}_{spec.key(cfg.data.label_protocol)}_{cfg.data.protocol}{budget}_s{cfg.seed}_{digest}"


def _coerce(value: str, current: Any, where: str) -> Any:
    """Parse a command-line string into the type of the field it overrides (YAML syntax)."""
    parsed = parse_yaml(value, f"override {where}={value!r}")
    if isinstance(current, bool) and not isinstance(parsed, bool):
        raise FERBenchError(f"override {where}={value!r}: expected true or false")
    if isinstance(current, str) and isinstance(parsed, bool):  # YAML reads no/off/yes as booleans
        return value.strip()
    if isinstance(current, float) and isinstance(parsed, int) and not isinstance(parsed, bool):
        return float(parsed)
    if isinstance(current, tuple) and isinstance(parsed, list):
        return tuple(parsed)
    return parsed


def _apply(obj: Any, key_path: list[str], value: Any, where: str, from_cli: bool) -> None:
    head, rest = key_path[0], key_path[1:]
    if isinstance(obj, dict):  # free-form sections (method_args, data.synthfer)
        if rest:
            _apply(obj.setdefault(head, {}), rest, value, where, from_cli)
        else:
            obj[head] = parse_yaml(value, f"override {where}={value!r}") if from_cli and isinstance(value, str) \
                else value
        return
    names = {f.name for f in dataclasses.fields(obj)}
    if head not in names:
        raise FERBenchError(f"unknown config key {where!r}; expected one of: {', '.join(sorted(names))}")
    current = getattr(obj, head)
    if rest:
        if not (dataclasses.is_dataclass(current) or isinstance(current, dict)):
            raise FERBenchError(f"unknown config key {where!r}: {head} has no sub-keys")
        _apply(current, rest, value, where, from_cli)
        return
    if dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise FERBenchError(f"config key {where!r} is a section; expected a mapping")
        for k, v in value.items():
            _apply(current, [k], v, f"{where}.{k}", from_cli)
        return
    if from_cli and isinstance(value, str):
        value = _coerce(value, current, where)
    elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    setattr(obj, head, value)


@dataclass
class _PresetLayer:
    """The presets named while the user's layer is applied (`layered`), and the one application whose values count."""

    keep: int | None  # index into `named` of the application that sets values; None: each one, in turn
    named: list[str | None] = dataclasses.field(default_factory=list)


_LAYER: ContextVar[_PresetLayer | None] = ContextVar("ferbench_preset_layer", default=None)


def apply_preset(cfg: RunConfig, name: Any, where: str = "preset") -> RunConfig:
    """Set preset `name`'s values (None: no preset) and name it in `cfg.preset`; `where` names it in errors.

    A run has one preset, so a record never names a preset whose values are not the ones in effect: while the user's
    layer is applied by `layered`, only the last preset named sets values; every earlier one leaves none behind."""
    name = check_value(name, str | None, where)  # a list or mapping would otherwise reach the file lookup
    layer = _LAYER.get()
    if layer is not None:
        layer.named.append(name)
        if layer.keep is not None and len(layer.named) - 1 != layer.keep:
            return cfg
    if name is not None:
        apply_mapping(cfg, get_preset(name).mapping(), source=f"preset {name}")
    cfg.preset = name
    return cfg


def apply_mapping(cfg: RunConfig, mapping: dict[str, Any], source: str = "config") -> RunConfig:
    """Merge a nested mapping (e.g. a parsed YAML file) into `cfg`; its `preset`, if any, goes first."""
    if "preset" in mapping:
        apply_preset(cfg, mapping["preset"], "preset" if source == "config" else f"{source}:preset")
    for k, v in mapping.items():
        if k == "preset":
            continue
        _apply(cfg, [k], v, k if source == "config" else f"{source}:{k}", from_cli=False)
    return cfg


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `a.b.c=value` strings (values parsed as YAML, typed like the field they replace)."""
    for item in overrides:
        if "=" not in item:
            raise FERBenchError(f"override {item!r}: expected KEY=VALUE, e.g. train.iterations=500")
        key, value = item.split("=", 1)
        if not key.strip() or any(not part for part in key.strip().split(".")):
            raise FERBenchError(f"override {item!r}: no config key before '='; expected KEY=VALUE, e.g. "
                                "train.iterations=500")
        if key.strip() == "preset":
            apply_preset(cfg, parse_yaml(value, f"override {item!r}"), "override preset")
            continue
        _apply(cfg, key.strip().split("."), value, key.strip(), from_cli=True)
    return cfg


def build_config(
    files: list[str | Path] | None = None, overrides: list[str] | None = None, base: dict | None = None
) -> RunConfig:
    """Defaults <- the recipe <- `base` mapping <- each YAML file in order <- dotted overrides."""
    mappings = [(base, "config")] if base else []
    mappings += [(load_yaml(f), str(f)) for f in files or []]

    def user(cfg: RunConfig) -> None:
        for mapping, source in mappings:
            apply_mapping(cfg, copy.deepcopy(mapping), source=source)
        apply_overrides(cfg, list(overrides or []))

    return layered(user)


def _user_layer(cfg: RunConfig, user: Callable[[RunConfig], None], keep: int | None) -> list[str | None]:
    """Apply `user` to `cfg`, only the `keep`-th preset it names setting values (None: each); the presets named."""
    layer = _PresetLayer(keep)
    token = _LAYER.set(layer)
    try:
        user(cfg)
    finally:
        _LAYER.reset(token)
    return layer.named


def layered(user: Callable[[RunConfig], None]) -> RunConfig:
    """The config `user` writes (it applies the user's mappings and overrides to a config), on top of the recipe
    it names: a first pass finds the recipe and method, the second starts from the recipe's values for them.

    The last preset the user names replaces any other wholly (an earlier one's, the recipe's): the config is built
    again from the defaults with that one alone, in its place. A config naming one preset is built as it always was,
    so its run id stays."""
    probe = RunConfig()
    named = _user_layer(probe, user, None)
    keep = len(named) - 1 if len(named) > 1 else None
    if keep is not None:
        probe = RunConfig()
        _user_layer(probe, user, keep)
    check_config(probe)  # the user's values are checked before any is used (a recipe named by a list)
    if probe.recipe == "harness":
        return probe
    recipe = get_recipe(probe.recipe).mapping(probe.method)
    if named:
        recipe.pop("preset", None)
    cfg = apply_mapping(RunConfig(), recipe, source=f"recipe {probe.recipe}")
    _user_layer(cfg, user, keep)
    return check_config(cfg)


def check_config(cfg: RunConfig, prefix: str = "") -> RunConfig:
    """Every value's type and range (the field annotations above): one line naming key and value if not."""
    check_fields(cfg, prefix)
    check_recipe(cfg.recipe)
    return cfg


def config_from_dict(d: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from `to_dict()` output (e.g. a record's or a sweep job's config), checked."""
    return check_config(apply_mapping(RunConfig(), d))
