"""Typed run config: dataclasses, loaded from YAML files and dotted command-line overrides.

A run is fully described by a `RunConfig`. Its resolved form (`to_dict`) is what the run id hashes
and what the run record stores, so two runs with the same resolved config are the same run.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from bench.checks import Interval, check_fields
from bench.errors import FERBenchError

# Value types of config fields, checked when a config is built (bench/checks.py): `key=value: expected ...`.
Positive = Annotated[float, Interval("(0, inf)")]
NonNegative = Annotated[float, Interval("[0, inf)")]
Probability = Annotated[float, Interval("[0, 1]")]
Decay = Annotated[float, Interval("[0, 1)")]
Count = Annotated[int, Interval("[1, inf)")]
NonNegativeInt = Annotated[int, Interval("[0, inf)")]
AreaFraction = Annotated[float, Interval("(0, 1]")]

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
AUGMENT_OPS = ("harness", "pil")
PAD_MODES = ("reflect", "zeros")
CHANNEL_ORDERS = ("rgb", "bgr")
STRONG_ORDERS = ("randaugment_first", "weak_first")


@dataclass
class DataConfig:
    name: str = "synthfer"
    root: str | None = None  # raw dataset folder; synthfer is generated into the cache when None
    protocol: Literal[BUDGET_PROTOCOLS] = "fraction"
    budget: float = 0.1  # its range depends on the protocol: bench/data/splits.py check_budget
    image_size: Annotated[int, Interval("[8, inf)")] = 48
    unlabeled: Literal["all", "rest"] = "all"  # "all": every training image is also unlabeled (USB); "rest": the others
    cache_dir: str | None = None  # default: $FERBENCH_CACHE or ~/.cache/ferbench
    on_bad_image: Literal["fail", "skip"] = "fail"
    synthfer: dict[str, Any] = field(default_factory=lambda: {"n_train": 6000, "n_test": 1500, "seed": 0})
    label_protocol: str | None = None  # the dataset's label rule (ferplus: majority8 | argmax7); None: its default
    options: dict[str, Any] = field(default_factory=dict)  # reader options (rafdb images, ferplus train_with_valid)
    # Where views are made (bench/engine/feed.py): "device" (batched on the accelerator, images held there
    # when they fit in `device_cache_gb`) or "cpu" (on the host, in `workers` background processes).
    augment_on: Literal[AUGMENT_ON] = "device"
    device_cache_gb: NonNegative | None = None  # None: half the accelerator's free memory; 0: always stream
    workers: NonNegativeInt = 0  # augment_on=cpu: DataLoader worker processes making future steps' views

    def reader_options(self) -> dict[str, Any]:
        """What the dataset's reader takes: synthfer's generator parameters, else `options`."""
        return dict(self.synthfer) if self.name == "synthfer" else dict(self.options)


@dataclass
class ModelConfig:
    backbone: str = "ferbench_cnn_small"
    pretrained_file: str | None = None  # local checkpoint only; never a hub download
    drop_rate: Decay = 0.0
    # "linear": features -> dropout -> linear. "normalized": the Ada-CM lineage's head, features -> dropout ->
    # L2-normalise -> linear, whose forward returns that normalised feature (reference/methods.md §1).
    head: Literal[HEADS] = "linear"
    timm_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments (img_size, ...)


@dataclass
class OptimConfig:
    name: Literal[OPTIMIZERS] = "sgd"
    lr: Positive = 0.03
    momentum: Decay = 0.9
    nesterov: bool = True
    weight_decay: NonNegative = 5e-4
    schedule: Literal[SCHEDULES] = "cosine"  # cosine: FixMatch's cos(7*pi*k / 16K); halfcosine: to min_lr
    warmup_iters: NonNegativeInt = 0
    betas: tuple[Decay, Decay] = (0.9, 0.999)  # adam / adamw
    min_lr: NonNegative = 0.0  # halfcosine: the floor it decays to
    decay_iters: NonNegativeInt = 0  # halfcosine: iterations of the decay, then min_lr; 0 = the whole run (or stage)


@dataclass
class AugmentConfig:
    crop_prob: Probability = 1.0  # probability of the padded random crop in the weak view
    pad_frac: Annotated[float, Interval("[0, 1)")] = 0.125  # padding as a fraction of the image side
    randaugment_n: NonNegativeInt = 3  # ops per strong view (sampled with replacement)
    cutout_max: Probability = 0.5  # cutout side ~ U(0, cutout_max) * image side
    crop: Literal[WEAK_CROPS] = "pad"  # weak-view crop: padded random crop | RandomResizedCrop
    rrc_scale: tuple[AreaFraction, AreaFraction] = (0.08, 1.0)  # crop="resized": range of the crop's area fraction
    # RandAugment and Cutout op semantics: "pil" = PIL's, as the reference code applies them to PIL images
    # (fill 0, shear about the top-left corner, posterize int(U(4, 8)) bits, cutout including its end pixel);
    # "harness" = grey fill 128, shear about the centre, posterize 4..8 bits, cutout excluding its end pixel.
    ops: Literal[AUGMENT_OPS] = "harness"
    pad_mode: Literal[PAD_MODES] = "reflect"  # the weak crop's padding: reflect (USB) | zeros (torchvision's default)
    # Resize every view (evaluation's too) to this side after RandAugment and Cutout and before the weak crop, as
    # the Ada-CM lineage's Resize(224) of its 100x100 faces; None: views keep the stored data.image_size.
    resize_to: Annotated[int, Interval("[8, inf)")] | None = None
    channels: Literal[CHANNEL_ORDERS] = "rgb"  # "bgr": the network sees BGR (cv2.imread without conversion)
    # The strong view: "randaugment_first" = RandAugment + Cutout, then the weak pipeline (the Ada-CM lineage);
    # "weak_first" = the weak crop and flip, then RandAugment + Cutout (USB's transform_strong).
    strong_order: Literal[STRONG_ORDERS] = "randaugment_first"
    normalize_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    normalize_std: tuple[Positive, Positive, Positive] = (0.229, 0.224, 0.225)


@dataclass
class TrainConfig:
    iterations: Count = 1000
    batch_size: Count = 32  # global labeled batch (all processes together)
    mu: NonNegativeInt = 3  # unlabeled batch = mu * batch_size
    ema_decay: Decay = 0.999  # 0 disables the EMA model
    eval_every: Count = 100
    log_every: Count = 10
    checkpoint_every: Count = 200
    mixed_precision: Literal[MIXED_PRECISION] = "no"  # no | bf16 | fp16: autocast through Accelerate
    channels_last: bool = False  # model and views in NHWC memory layout (faster convolutions on GPUs)
    compile: Literal[COMPILE_MODES] = "none"  # torch.compile's mode; reduce-overhead = CUDA graphs
    fused_optimizer: bool = True  # torch's fused optimiser kernels where available (CUDA); recorded
    stop_after: Count | None = None  # stop (checkpointed) at this iteration: a simulated interruption
    # "joint": one forward over the labeled batch and every unlabeled view (USB); "separate": one forward per
    # part, so BatchNorm normalises each with its own statistics (the Ada-CM lineage).
    forward: Literal[FORWARD_BATCHING] = "joint"
    # How the EMA model is updated: "tensors" = each parameter and buffer once (timm's ModelEmaV3); "state_dict" =
    # once per state_dict() entry, as the Ada-CM lineage's WeightEMA, so a module registered k times (LEAF's
    # shared expert) is averaged k times per step.
    ema_walk: Literal[EMA_WALKS] = "tensors"
    # The Ada-CM lineage's "customised weight decay": after each EMA update, every float state_dict() entry of the
    # student is multiplied by (1 - student_decay * lr) (the code's 0.02); 0 = off.
    student_decay: NonNegative = 0.0


# Named hyper-parameter presets (reference/methods.md §1, §7), selectable for any method. A preset is
# applied where it appears: first in a YAML mapping, in order among command-line overrides.
PRESETS: dict[str, dict[str, Any]] = {
    # USB's CIFAR defaults: SGD 0.03 (nesterov, wd 5e-4), cosine, B=64, mu=7, EMA 0.999.
    "usb": {
        "optim": {"name": "sgd", "lr": 0.03, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
                  "schedule": "cosine", "warmup_iters": 0},
        "train": {"batch_size": 64, "mu": 7, "ema_decay": 0.999},
    },
    # The Ada-CM code lineage (Ada-CM, LEAF, SIT-FER): Adam 5e-4, constant LR, B=16, mu=1, EMA 0.999.
    "adacm": {
        "optim": {"name": "adam", "lr": 5e-4, "weight_decay": 0.0, "schedule": "constant", "warmup_iters": 0},
        "train": {"batch_size": 16, "mu": 1, "ema_decay": 0.999},
    },
    # FR-pretraining's reference recipe (reference/methods.md §5, zhelishisongjie/SSFER): ViT-B/16 at 224 px,
    # stage lengths in iterations for RAF-DB (12,271 training images) at 10% labels (1,227):
    # MAE 800 epochs x 48 batches of 256 with 50 warm-up epochs; fine-tuning 100 epochs x 38 batches of 32,
    # 5 warm-up epochs, cosine to 1e-5 by epoch 50; FixMatch 50 epochs x 192 unlabeled batches of 64.
    "ssfer": {
        "data": {"image_size": 224},
        "model": {"backbone": "vit_base_patch16_224"},
        "stages": {
            "pretrain": {"train": {"iterations": 38400, "batch_size": 256, "mu": 1},
                         "optim": {"warmup_iters": 2400}},
            "finetune": {"train": {"iterations": 3800, "batch_size": 32},
                         "optim": {"warmup_iters": 190, "decay_iters": 1900}},
            "semisup": {"train": {"iterations": 9600, "batch_size": 64, "mu": 1}},
        },
    },
}


@dataclass
class RunConfig:
    method: str = "fixmatch"
    # the protocol: "harness" (one substrate for every method) or a reference recipe (bench/recipes/<name>.yaml)
    recipe: str = "harness"
    preset: str | None = None
    seed: NonNegativeInt = 0
    split_seed: NonNegativeInt | None = None  # defaults to seed: seed i fixes both the split and the training
    method_args: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    #: per-stage overrides of multi-stage methods: {stage name: {"optim"|"train"|"augment": {...}}}
    stages: dict[str, Any] = field(default_factory=dict)
    output_dir: str = "runs"

    @property
    def effective_split_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Fields that say where things go or how to watch them, not what is computed: left out of the run id.
_NOT_IN_RUN_ID = {
    ("output_dir",),
    ("data", "cache_dir"),
    ("data", "root"),
    ("train", "stop_after"),
    ("train", "log_every"),
    ("train", "checkpoint_every"),
    # How fast, not what: the same run on the fast or the classic path is the same run (on a CPU host the
    # two paths give identical batches); the record's `performance` block says which path made it.
    ("data", "augment_on"),
    ("data", "device_cache_gb"),
    ("data", "workers"),
    ("train", "channels_last"),
    ("train", "compile"),
    ("train", "fused_optimizer"),
}


# Fields added after records were published: left out of the run id while at their default, so every
# earlier run keeps its id (a sweep still finds its records) and a non-default value still makes a new run.
_HASHED_WHEN_SET = {
    ("model", "timm_kwargs"): {},
    ("optim", "betas"): [0.9, 0.999],
    ("optim", "min_lr"): 0.0,
    ("optim", "decay_iters"): 0,
    ("stages",): {},
    ("augment", "crop"): "pad",
    ("augment", "rrc_scale"): [0.08, 1.0],
    ("recipe",): "harness",
    ("model", "head"): "linear",
    ("augment", "ops"): "harness",
    ("augment", "pad_mode"): "reflect",
    ("augment", "resize_to"): None,
    ("augment", "channels"): "rgb",
    ("augment", "strong_order"): "randaugment_first",
    ("train", "forward"): "joint",
    ("train", "ema_walk"): "tensors",
    ("train", "student_decay"): 0.0,
}


def _strip(d: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = prefix + (k,)
        if key in _NOT_IN_RUN_ID:
            continue
        if key == ("stages",) and isinstance(v, dict):  # per stage, the same watch settings stay out of the id
            v = {name: {sec: vals for sec, vals in _strip(sections).items() if vals != {}}
                 for name, sections in v.items() if isinstance(sections, dict)}
            v = {name: sections for name, sections in v.items() if sections}
        if key in _HASHED_WHEN_SET and (list(v) if isinstance(v, tuple) else v) == _HASHED_WHEN_SET[key]:
            continue
        out[k] = _strip(v, key) if isinstance(v, dict) else v
    return out


def run_id(cfg: RunConfig) -> str:
    """Readable prefix + a hash of the resolved config (paths and watch settings excluded)."""
    resolved = _strip(cfg.to_dict())
    if cfg.data.name == "synthfer":  # the generator's defaults and version decide the data: hash them too
        from bench.data.synthfer import resolved_params

        resolved["data"]["synthfer"] = resolved_params(**cfg.data.synthfer)
    from bench.data.datasets import get_dataset

    spec = get_dataset(cfg.data.name)  # defaults spelled out or left implicit name the same run
    resolved["data"]["label_protocol"] = spec.protocol(cfg.data.label_protocol)
    resolved["data"]["options"] = spec.resolve_options(cfg.data.options)
    payload = json.dumps(resolved, sort_keys=True, default=str)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:10]
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


def apply_preset(cfg: RunConfig, name: str | None) -> RunConfig:
    if name is None:
        cfg.preset = None
        return cfg
    if name not in PRESETS:
        raise FERBenchError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    apply_mapping(cfg, PRESETS[name])
    cfg.preset = name
    return cfg


def apply_mapping(cfg: RunConfig, mapping: dict[str, Any], source: str = "config") -> RunConfig:
    """Merge a nested mapping (e.g. a parsed YAML file) into `cfg`; its `preset`, if any, goes first."""
    if "preset" in mapping:
        apply_preset(cfg, mapping["preset"])
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
        if key.strip() == "preset":
            apply_preset(cfg, parse_yaml(value, f"override {item!r}"))
            continue
        _apply(cfg, key.strip().split("."), value, key.strip(), from_cli=True)
    return cfg


def parse_yaml(text: str, where: str) -> Any:
    """`text` parsed as YAML; a syntax error is one line: `where:LINE:COLUMN: not valid YAML: <problem>`."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        context = getattr(e, "context", None)
        cmark = getattr(e, "context_mark", None)
        if context and cmark is not None:
            context += f" at line {cmark.line + 1}, column {cmark.column + 1}"
        raise FERBenchError(f"{where}{at}: not valid YAML: {problem}" + (f" ({context})" if context else "")) from e


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FERBenchError(f"{path}: config file not found")
    data = parse_yaml(path.read_text(), str(path)) or {}
    if not isinstance(data, dict):
        raise FERBenchError(f"{path}: expected a mapping at the top level")
    return data


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


def layered(user: Callable[[RunConfig], None]) -> RunConfig:
    """The config `user` writes (it applies the user's mappings and overrides to a config), on top of the recipe
    it names: a first pass finds the recipe and method, the second starts from the recipe's values for them."""
    probe = RunConfig()
    user(probe)
    if probe.recipe == "harness":
        return check_config(probe)
    from bench.recipe import get_recipe

    cfg = apply_mapping(RunConfig(), get_recipe(probe.recipe).mapping(probe.method), source=f"recipe {probe.recipe}")
    user(cfg)
    return check_config(cfg)


def check_config(cfg: RunConfig, prefix: str = "") -> RunConfig:
    """Every value's type and range (the field annotations above): one line naming key and value if not."""
    check_fields(cfg, prefix)
    from bench.recipe import check_recipe

    check_recipe(cfg.recipe)
    return cfg


def config_from_dict(d: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from `to_dict()` output (e.g. a record's or a sweep job's config), checked."""
    return check_config(apply_mapping(RunConfig(), d))
