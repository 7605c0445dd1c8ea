"""Behavioural fingerprints: what a record's numbers depend on in the code, measured rather than hashed.

A run id hashes the config, never the code (a refactor must not throw away GPU-days of results), so a fix to a
loss, a view, the EMA or the evaluation would leave every record "done" and the leaderboards mixing numbers from
before and after it. The fingerprint records the code's *behaviour* instead: a short, deterministic probe of a
method under a protocol, end to end through the real engine on fixed generated images:

    the data path and views (`ViewMaker`, the feed, the split and the labeled/unlabeled pools of the protocol),
    the model and its head (a tiny backbone of the run's family), the method's training step over a few optimiser
    steps with its EMA, thresholds and state (its hook called once), and the evaluation,

on the CPU, in one thread, with deterministic algorithms, whatever hardware the real run uses, so a GPU run and a
CPU run of the same code carry the same fingerprint. Its result is a small vector (each logged value at each step,
the evaluation metrics, statistics of the weights, the EMA weights, the method's state and the evaluation
logits); two fingerprints are the same when the vectors agree within `RTOL`/`ATOL`, and the digest of the vector
rounded to `DIGITS` significant digits is its short name. Multi-stage methods are probed stage by stage.

What it covers: any change to FERBench's code or data files that moves one of those numbers by more than the
tolerance. What it does not: a change whose effect on the probe's few steps is below the tolerance, code paths the
probe does not take (other budgets, backbones, image sizes, optimiser presets, the face-detector box provider),
and changes in a dependency's kernels (torch, timm), which can move numbers without FERBench's code changing.

The key is the method, the protocol (recipe) and the method's non-default arguments. A fingerprint is computed
once per installed code state (the sha256 of FERBench's source and data files, torch's and timm's versions) and
cached under `<FERBENCH_CACHE>/fingerprints/`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.config import RunConfig, apply_overrides, layered
from bench.data.cache import PreparedDataset, PreparedSplit, default_cache_dir
from bench.data.labels import CANONICAL_CLASSES
from bench.engine.run_data import run_data_from
from bench.engine.stage import RunSetup, StageRun, build_stage_model
from bench.errors import FERBenchError
from bench.method import HookContext, Method
from bench.registry import create_method, get_method_class
from bench.results.record import write_json_atomic

PROBE_VERSION = 1
PROBE_STEPS = 5
#: a classifier first learns the generated images (Adam, full batch), so that its predictions are confident enough
#: for pseudo-label thresholds to pass: from a random start, no method's unlabeled loss would be live in the probe
WARM_STEPS, WARM_LR = 30, 0.01
HOOK_AFTER = 2  # a method with a periodic hook (Ada-CM's thresholds) has it called once, after this step
RTOL, ATOL = 1e-3, 1e-6
DIGITS = 4
N_TRAIN, N_TEST, SIDE, CLASSES = 64, 32, 32, 7
#: what the probe sets on top of the run's method, protocol and arguments: a short run at 32 px on the CPU
PROBE_OVERRIDES = [
    "seed=0", "split_seed=null", "data.protocol=fraction", "data.budget=0.25", f"data.image_size={SIDE}",
    "data.augment_on=device", "data.workers=0", "model.pretrained_file=null", "stages={}",
    f"train.iterations={PROBE_STEPS}", "train.batch_size=8", "train.mu=2", "train.log_every=1",
    f"train.eval_every={PROBE_STEPS}", "train.checkpoint_every=100000", "train.stop_after=null",
    "train.mixed_precision=no", "train.compile=none", "train.channels_last=false", "train.fused_optimizer=false",
]
TINY_CNN = ["model.backbone=ferbench_cnn_tiny", "model.timm_kwargs={}"]
TINY_VIT = ["model.backbone=ferbench_vit_tiny", f"model.timm_kwargs={{img_size: {SIDE}, patch_size: 8}}"]


def fingerprint_key(cfg: RunConfig) -> str:
    """`method@recipe`, `/vit` when the run's backbone is a vision transformer (the probe's tiny model is one too),
    then the method's arguments that differ from their defaults (canonical JSON)."""
    method = create_method(cfg.method, CLASSES, cfg.method_args)
    defaults = create_method(cfg.method, CLASSES).hparams
    changed = {k: v for k, v in method.hparams.items() if v != defaults[k]}
    family = "/vit" if _is_vit(cfg.model.backbone) else ""
    return f"{cfg.method}@{cfg.recipe}{family}" + (json.dumps(changed, sort_keys=True, default=str) if changed else "")


@functools.cache
def source_hash() -> str:
    """sha256 of FERBench's source and data files (bench/, methods/) and of the versions of torch and timm: the code
    state a cached fingerprint belongs to."""
    import bench
    import methods

    h = hashlib.sha256()
    for package in (bench, methods):
        root = Path(package.__file__).parent
        for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts):
            h.update(f"{package.__name__}/{path.relative_to(root)}".encode())
            h.update(path.read_bytes())
    import timm

    h.update(f"torch {torch.__version__} timm {timm.__version__} probe {PROBE_VERSION}".encode())
    return h.hexdigest()


def probe_config(cfg: RunConfig) -> RunConfig:
    """The probe's config: the run's method, recipe and arguments (with the method's `probe_args`) under the
    recipe's values, then `PROBE_OVERRIDES` and a tiny backbone of the run's family."""
    cls = get_method_class(cfg.method)

    def user(c: RunConfig) -> None:
        c.method, c.recipe = cfg.method, cfg.recipe
        c.method_args = cls.probe_arguments(dict(cfg.method_args))
        apply_overrides(c, PROBE_OVERRIDES)

    probe = layered(user)
    family = TINY_VIT if _is_vit(cfg.model.backbone) else TINY_CNN
    resize = [f"augment.resize_to={SIDE + 8}"] if probe.augment.resize_to is not None else []
    apply_overrides(probe, family + resize)
    return probe


@functools.cache
def _is_vit(backbone: str) -> bool:
    import timm

    from bench.engine import model  # noqa: F401 - registers FERBench's own backbones with timm

    with torch.device("meta"):
        return hasattr(timm.create_model(backbone, num_classes=0), "patch_embed")


def probe_data() -> PreparedDataset:
    """Fixed generated images: each class a colour tint and a brighter band at its own height, over noise."""
    rng = np.random.default_rng(20261203)

    def split(n: int, prefix: str) -> PreparedSplit:
        labels = np.arange(n) % CLASSES
        images = rng.integers(0, 96, (n, SIDE, SIDE, 3)).astype(np.int64)
        for i, c in enumerate(labels):
            images[i, :, :, c % 3] += 60
            images[i, 4 * c : 4 * c + 4] += 90
        return PreparedSplit([f"{prefix}{i}" for i in range(n)], np.clip(images, 0, 255).astype(np.uint8),
                             labels.astype(np.int64), labels.astype(np.int64))

    return PreparedDataset("probe", Path("."), tuple(CANONICAL_CLASSES[:CLASSES]), f"probe-v{PROBE_VERSION}", {},
                           split(N_TRAIN, "train"), split(N_TEST, "test"))


class ProbeAccelerator:
    """One CPU process, as Accelerate runs it (prepare is the identity, backward the plain one, no collectives).
    The probe cannot build a second `Accelerator`: its state is a process-wide singleton that the run owns."""

    device = torch.device("cpu")
    num_processes, process_index, is_main_process = 1, 0, True

    class state:  # noqa: N801 - the attribute Accelerate's users read
        deepspeed_plugin = None

    def prepare(self, *objects: Any) -> Any:
        return objects if len(objects) > 1 else objects[0]

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def main_process_first(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def free_memory(self, *objects: Any) -> None:
        pass

    def log(self, values: dict[str, Any], step: int | None = None) -> None:
        pass

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def unwrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model


@contextlib.contextmanager
def _deterministic_cpu() -> Iterator[None]:
    """One thread and deterministic algorithms for the probe, the caller's settings and random state restored."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(deterministic)
            torch.set_num_threads(threads)


def _stats(prefix: str, tensors: list[torch.Tensor]) -> list[tuple[str, float]]:
    flat = [t.detach().double().reshape(-1) for t in tensors if t.is_floating_point() and t.numel()]
    if not flat:
        return []
    x = torch.cat(flat)
    return [(f"{prefix}.sum", float(x.sum())), (f"{prefix}.sumsq", float((x * x).sum()))]


def _stage_vector(sr: StageRun, method: Method) -> list[tuple[str, float]]:
    """Train the probe stage from its first step (no checkpoint, no session), then read what its numbers depend on."""
    sr.model.train()
    for step in range(1, PROBE_STEPS + 1):
        sr.step()
        sr.log()
        if step == HOOK_AFTER and method.hook_every():
            method.on_hook(HookContext(step=step, epoch=1, predict_labeled=sr.predict_labeled))
    name = sr.stage.name
    out = [(f"{name}.{row['step']}.{k}", float(v)) for row in sr.state.curves for k, v in sorted(row.items())
           if k != "step"]
    if sr.stage.evaluate:
        metrics = sr.evaluate()
        out += [(f"{name}.eval.{k}", float(metrics[k])) for k in ("accuracy", "mean_class_accuracy", "macro_f1")]
        with torch.no_grad():
            model = sr.eval_model.eval()
            images = torch.from_numpy(sr.data.data.test.images).permute(0, 3, 1, 2)
            out += _stats(f"{name}.eval.logits", [model(sr.views.make("none", images)).float()])
    out += _stats(f"{name}.weights", list(sr.student.state_dict().values()))
    if sr.ema is not None:
        out += _stats(f"{name}.ema", list(sr.ema.module.state_dict().values()))
    out += _stats(f"{name}.state", [getattr(method, s.name).float() for s in method.state_specs()])
    return out


def probe(cfg: RunConfig) -> dict[str, Any]:
    """Run the probe of `cfg`'s method and protocol; its fingerprint."""
    pcfg = probe_config(cfg)
    with _deterministic_cpu():
        method_cls = get_method_class(pcfg.method)
        data = run_data_from(probe_data(), pcfg, method_cls, None)
        method = create_method(pcfg.method, CLASSES, pcfg.method_args)
        method.setup(_setup_info(pcfg, data))
        run = RunSetup(ProbeAccelerator(), pcfg, method, data, "probe")
        previous, values = None, []
        for stage in method.stages():
            model, _ = build_stage_model(run, stage, previous)
            if stage.evaluate and model is not previous:  # a new classifier, not the previous stage's, handed on
                _warm_start(model, pcfg, stage, data)
            sr = StageRun(run, stage, model)
            values += _stage_vector(sr, method)
            previous = sr.finish().model
    labels = [k for k, _ in values]
    vector = [v for _, v in values]
    return {"key": fingerprint_key(cfg), "probe": PROBE_VERSION, "digest": digest(vector), "vector": vector,
            "labels": labels, "source": source_hash()[:16]}


def _warm_start(model: torch.nn.Module, cfg: RunConfig, stage: Any, data: Any) -> None:
    """`WARM_STEPS` full-batch Adam steps of cross-entropy on the generated training images' unaugmented views."""
    from bench.data.views import ViewMaker
    from bench.engine.stage import stage_config

    views = ViewMaker(stage_config(cfg, stage).augment)
    x = views.make("none", torch.from_numpy(data.data.train.images).permute(0, 3, 1, 2))
    y = torch.from_numpy(data.data.train.labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=WARM_LR)
    model.train()
    for _ in range(WARM_STEPS):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _setup_info(cfg: RunConfig, data: Any) -> Any:
    from bench.method import SetupInfo

    return SetupInfo(num_classes=CLASSES, num_labeled=len(data.labeled_pool), num_unlabeled=len(data.unlabeled_pool),
                     total_steps=cfg.train.iterations)


def digest(vector: list[float]) -> str:
    """The short name of a vector: the sha256 (first 12 hex) of its values rounded to `DIGITS` significant digits."""
    rounded = [float(f"{v:.{DIGITS - 1}e}") if math.isfinite(v) else str(v) for v in vector]
    return hashlib.sha256(json.dumps(rounded).encode()).hexdigest()[:12]


def same_behaviour(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two fingerprints describe the same behaviour: same key and probe, vectors equal within tolerance."""
    if not a or not b or a.get("key") != b.get("key") or a.get("probe") != b.get("probe"):
        return False
    if a.get("digest") == b.get("digest"):
        return True
    va, vb = np.asarray(a.get("vector") or [], dtype=float), np.asarray(b.get("vector") or [], dtype=float)
    return va.shape == vb.shape and bool(np.allclose(va, vb, rtol=RTOL, atol=ATOL, equal_nan=True))


def changed_values(old: dict[str, Any], new: dict[str, Any], most: int = 3) -> list[str]:
    """What moved between two fingerprints of one key, for a legend: the first `most` labels out of tolerance."""
    if old.get("labels") != new.get("labels"):
        return ["the probe's logged values themselves (added or removed)"]
    out = []
    for label, x, y in zip(new["labels"], old["vector"], new["vector"], strict=True):
        if not math.isclose(x, y, rel_tol=RTOL, abs_tol=ATOL):
            out.append(f"{label} {x:.4g} -> {y:.4g}")
    return out[:most]


def _cache_file() -> Path:
    return default_cache_dir() / "fingerprints" / f"{source_hash()[:16]}.json"


def current_fingerprint(cfg: RunConfig) -> dict[str, Any]:
    """The fingerprint of `cfg`'s method and protocol for the code installed now: cached, probed when missing."""
    return current_fingerprints([cfg])[fingerprint_key(cfg)]


def current_fingerprints(cfgs: list[RunConfig]) -> dict[str, dict[str, Any]]:
    """The fingerprint of each config's key for the code installed now, probing only the keys not cached."""
    path = _cache_file()
    try:
        cached = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        cached = {}  # a damaged cache is recomputed, never trusted
    out, new = {}, False
    for cfg in cfgs:
        key = fingerprint_key(cfg)
        if key not in out and key not in cached:
            try:
                cached[key] = probe(cfg)
            except FERBenchError as e:  # a config no run can train either (e.g. an MAE stage on a CNN)
                cached[key] = {"key": key, "probe": PROBE_VERSION, "error": str(e), "source": source_hash()[:16]}
            new = True
        out[key] = cached[key]
    if new:
        with contextlib.suppress(OSError):  # a read-only cache only costs a recomputation next time
            write_json_atomic(path, cached)
    return out


def config_of_key(key: str) -> RunConfig:
    """A config of fingerprint key `method@recipe{non-default arguments}`: what the probe needs to run it again."""
    from bench.config import build_config

    head, brace, args = key.partition("{")
    method, _, recipe = head.partition("@")
    recipe, _, family = recipe.partition("/")
    arguments = json.loads(brace + args) if brace else {}
    model = {"model": {"backbone": "ferbench_vit_tiny"}} if family == "vit" else {}
    return build_config(base={"method": method, "recipe": recipe, "method_args": arguments, **model})


def config_of_record(record: dict[str, Any]) -> RunConfig:
    """The config a record's fingerprint key is computed from (its method, recipe and arguments)."""
    from bench.config import config_from_dict

    return config_from_dict(copy.deepcopy(record["config"]))

