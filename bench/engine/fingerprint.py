"""Behavioural fingerprints: what a record's numbers depend on in the code, measured rather than hashed.

A run id hashes the config, never the code (a refactor must not throw away GPU-days of results), so a fix to a
loss, a view, the EMA or the evaluation would leave every record "done" and the leaderboards mixing numbers from
before and after it. The fingerprint records the code's *behaviour* instead: a short, deterministic probe of the
run's method under the run's own settings, end to end through the real engine (bench/engine/probe.py).

What enters it. Everything in a run's config but its scale: the method and its arguments, the protocol (recipe),
optimiser and schedule, head, views and crop, forward batching, EMA settings, split protocol and whether the split
seed is set, a pretrained file's loading (a generated checkpoint of the probe's backbone), the dataset's classes
and, for synthfer, its generator settings. Scale is the probe's own: `probe.STEPS` iterations of batch 8 (mu at
most 2), images of the run's side up to `SIDE_MAX` px, a tiny backbone of the run's family (CNN or ViT), seed 0.
A few settings cannot be exercised on a CPU in a few steps and enter the key only (mixed precision, timm keyword
arguments of the full-size backbone).

What it guarantees. The probe runs in a child process whose kernels are pinned to the x86-64 baseline
(`PINNED_ENV`), so a fingerprint is the same bits on any x86-64 CPU (checked on AVX-512 and under AVX2 emulation)
and on a GPU host; ARM and other architectures run other kernel builds and are not promised equal. Two
fingerprints of one key describe the same behaviour when every value of the older one is present in the newer and
equal within `RTOL`/`ATOL` (a newly logged value is not a change of behaviour), and every exact entry (data and
split identities) is equal.

What it does not cover: a change whose effect on the probe is below the tolerance, code the probe does not run
(full-size backbones, GPU kernels, mixed precision, other image sizes), and a dependency's kernels changing
between versions (torch's and timm's versions are part of the code state, so the fingerprint is recomputed).

A fingerprint is computed once per code state (bench/engine/codestate.py: comments and docstrings do not change
it) and cached under `<FERBENCH_CACHE>/fingerprints/`. A probe that cannot run is recorded as
`{"unavailable": why}` and never stops a run.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.config import RunConfig, _identity, _stage_identity, apply_mapping, check_config, config_from_dict
from bench.data.cache import default_cache_dir
from bench.engine.codestate import PROBE_VERSION, code_state, plugin_files
from bench.errors import FERBenchError
from bench.method import parse_arguments, per_step_decays
from bench.registry import create_method, get_method_class
from bench.results.record import digest, fingerprint_problem, read_json_file, write_json_atomic

RTOL, ATOL = 1e-3, 1e-6
SIDE_MAX = 48
BATCH, MU_MAX = 8, 2
EMA_TIME_SCALE = 350  # a probe step stands for this many of a run's, for the EMA (`probe_decay`)
TINY_CNN = "ferbench_cnn_tiny"
TINY_VIT = "ferbench_vit_tiny"
#: the probe child's environment: every kernel library on the x86-64 baseline and one thread
PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
    "ONEDNN_MAX_CPU_ISA": "SSE41", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
    "CUDA_VISIBLE_DEVICES": "", "PYTHONHASHSEED": "0",
}
PROBE_TIMEOUT_S = 300  # per config


# ---- the probe's config and the key -----------------------------------------------------------------------------


@functools.cache
def is_vit(backbone: str) -> bool:
    import timm
    import torch

    from bench.engine import model  # noqa: F401 - registers FERBench's own backbones with timm

    with torch.device("meta"):
        return hasattr(timm.create_model(backbone, num_classes=0), "patch_embed")


def _scaled_budget(protocol: str, num_classes: int) -> float:
    from bench.engine.probe import N_TRAIN

    return {"fraction": 0.25, "total": float(N_TRAIN // 4)}.get(protocol, float(max(1, N_TRAIN // (4 * num_classes))))


def probe_config(cfg: RunConfig) -> RunConfig:
    """The probe's config: `cfg` with its scale replaced by the probe's (see the module's docstring)."""
    from bench.data.datasets import get_dataset
    from bench.engine.probe import EVAL_EVERY, PRETRAINED_MARK, STEPS

    p = config_from_dict(copy.deepcopy(cfg.to_dict()))
    spec = get_dataset(p.data.name)
    classes = spec.num_classes_for(spec.protocol(p.data.label_protocol))
    cls = get_method_class(p.method)
    given = _hparams(cls, cls.probe_arguments(dict(p.method_args)))
    for name in per_step_decays(cls.Args):  # a method's own EMA momenta on the probe's time scale, as the model's
        given[name] = probe_decay(given[name])
    p.method_args = _non_default(cls, given)
    p.seed, p.split_seed, p.output_dir = 0, (None if cfg.split_seed is None else 1), "probe"
    side = min(p.data.image_size, SIDE_MAX)
    p.data.image_size, p.data.budget = side, _scaled_budget(p.data.protocol, classes)
    p.data.root, p.data.cache_dir, p.data.options = None, None, {}
    p.data.synthfer = {k: v for k, v in p.data.synthfer.items() if k not in ("n_train", "n_test", "seed", "size")}
    p.data.augment_on, p.data.workers, p.data.device_cache_gb = "device", 0, None
    vit = is_vit(cfg.model.backbone)
    p.model.backbone = TINY_VIT if vit else TINY_CNN
    p.model.timm_kwargs = {"img_size": side, "patch_size": 8} if vit else {}
    p.model.pretrained_file = PRETRAINED_MARK if cfg.model.pretrained_file else None
    if p.augment.resize_to is not None:
        p.augment.resize_to = side + 8
    o = p.optim
    o.warmup_iters, o.decay_iters = min(o.warmup_iters, 2), (min(o.decay_iters, STEPS - 1) if o.decay_iters else 0)
    scale = {"iterations": STEPS, "batch_size": BATCH, "eval_every": EVAL_EVERY, "log_every": 1,
             "checkpoint_every": 10**9, "stop_after": None, "compile": "none", "channels_last": False,
             "fused_optimizer": False}
    apply_mapping(p, {"train": {**scale, "mu": min(p.train.mu, MU_MAX)}})
    _probe_stages(p, scale, classes)
    return check_config(p)


def _probe_stages(p: RunConfig, scale: dict[str, Any], classes: int) -> None:
    """The run's stage overrides without their scale, the probe's scale for every stage that sets its own, and
    each stage's EMA decay on the probe's time scale."""
    from bench.engine.stage import stage_config

    stages = {}
    for name, sections in (p.stages or {}).items():
        sections = copy.deepcopy(sections) if isinstance(sections, dict) else {}
        train = {k: v for k, v in (sections.get("train") or {}).items() if k not in scale}
        if "mu" in train:
            train["mu"] = min(train["mu"], MU_MAX)
        optim = {k: min(v, 2) if k in ("warmup_iters", "decay_iters") else v
                 for k, v in (sections.get("optim") or {}).items()}
        stages[name] = {**sections, "train": {**train, **scale}, "optim": optim}
    method = create_method(p.method, classes, p.method_args)
    for stage in method.stages():  # stage defaults may set their own scale: the probe's wins
        if stage.name not in stages and stage.defaults:
            stages[stage.name] = {"train": dict(scale)}
    p.stages = stages
    for stage in method.stages():  # each stage's EMA on the probe's time scale (its decay is the stage's own)
        if stage.name in stages:
            stages[stage.name]["train"]["ema_decay"] = probe_decay(stage_config(p, stage).train.ema_decay)
    p.train.ema_decay = probe_decay(p.train.ema_decay)  # the run's, for stages without their own section


def probe_decay(decay: float) -> float:
    """An EMA decay on the probe's time scale: `decay ** EMA_TIME_SCALE` (0.999 -> 0.70), so the EMA moves in a
    few steps as it does over a run's thousands; a one-to-one map, so two decays stay two probes."""
    return round(decay**EMA_TIME_SCALE, 12) if decay > 0 else 0.0


def key_settings(cfg: RunConfig) -> dict[str, Any]:
    """What the key stands for: the probe config's identity (its run-id fields) and the run's settings that enter
    the key only. `config_of_settings` rebuilds a config with the same probe config and key from it."""
    cls = get_method_class(cfg.method)
    run_only = {"method_args": _non_default(cls, _hparams(cls, dict(cfg.method_args))),
                "mixed_precision": cfg.train.mixed_precision,
                # the probe maps these to its own time scale: the run's values, so the settings rebuild them
                "ema_decay": cfg.train.ema_decay, "stages": _stage_identity(copy.deepcopy(cfg.stages)),
                "timm_kwargs": {k: v for k, v in cfg.model.timm_kwargs.items() if k not in ("img_size",)}}
    return {"probe": _identity(RunConfig, probe_config(cfg).to_dict()), "run": run_only}


def config_of_settings(settings: dict[str, Any]) -> RunConfig:
    """A run config whose probe config and key are those `settings` (`key_settings`) stand for."""
    cfg = apply_mapping(RunConfig(), copy.deepcopy(settings["probe"]))
    cfg.method_args = copy.deepcopy(settings["run"]["method_args"])
    cfg.train.ema_decay, cfg.stages = settings["run"]["ema_decay"], copy.deepcopy(settings["run"]["stages"])
    cfg.train.mixed_precision = settings["run"]["mixed_precision"]
    cfg.model.timm_kwargs = copy.deepcopy(settings["run"]["timm_kwargs"])
    return check_config(cfg)


def fingerprint_key(cfg: RunConfig) -> str:
    """`method@recipe`, `/vit` for a vision-transformer run, the method's arguments that differ from their
    defaults (canonical JSON), then `#` and 8 hex digits of the key's settings (`key_settings`)."""
    cls = get_method_class(cfg.method)
    changed = _non_default(cls, _hparams(cls, dict(cfg.method_args)))
    family = "/vit" if is_vit(cfg.model.backbone) else ""
    settings = json.dumps(key_settings(cfg), sort_keys=True, default=str)
    args = json.dumps(changed, sort_keys=True, default=str) if changed else ""
    return f"{cfg.method}@{cfg.recipe}{family}{args}#{hashlib.sha256(settings.encode()).hexdigest()[:8]}"


def _hparams(cls: type, given: dict[str, Any]) -> dict[str, Any]:
    """Every argument of method class `cls` (defaults included), `given` checked and canonical."""
    return dataclasses.asdict(parse_arguments(cls.Args, given, f"method {cls.name!r}"))


def _non_default(cls: type, hparams: dict[str, Any]) -> dict[str, Any]:
    """The arguments in `hparams` that differ from `cls`'s defaults: a default spelled out is none."""
    defaults = _hparams(cls, {})
    return {k: v for k, v in hparams.items() if v != defaults[k]}


# ---- running probes ---------------------------------------------------------------------------------------------


def pinned_env() -> dict[str, str]:
    """The probe child's environment: this one with `PINNED_ENV`, numpy's optional CPU features off, and
    FERBench's own folder first on the path (the same code as this process)."""
    env = {**os.environ, **PINNED_ENV}
    try:
        from numpy._core import _multiarray_umath as umath

        optional = [f for f in umath.__cpu_dispatch__ if f not in umath.__cpu_baseline__]
        env["NPY_DISABLE_CPU_FEATURES"] = " ".join(optional)
    except (ImportError, AttributeError):
        env.pop("NPY_DISABLE_CPU_FEATURES", None)
    import bench

    root = str(Path(bench.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env.pop("FERBENCH_OPENMP", None)
    return env


def run_probes(cfgs: list[RunConfig]) -> list[dict[str, Any]]:
    """Each config's probe result (`vector`, `labels`, `exact`, `live`, or `unavailable`), from one pinned child."""
    request = {"configs": [probe_config(c).to_dict() for c in cfgs],
               "modules": [str(p) for _, p in plugin_files()]}
    try:
        res = subprocess.run([sys.executable, "-m", "bench.engine.probe"], input=json.dumps(request),
                             capture_output=True, text=True, env=pinned_env(),
                             timeout=60 + PROBE_TIMEOUT_S * len(cfgs))
    except (OSError, subprocess.TimeoutExpired) as e:
        return [{"unavailable": f"the probe process failed: {type(e).__name__}"}] * len(cfgs)
    line = next((ln for ln in reversed(res.stdout.splitlines()) if ln.startswith("FERBENCH-PROBE ")), None)
    if res.returncode != 0 or line is None:
        tail = (res.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return [{"unavailable": f"the probe process exited {res.returncode}: {tail}"}] * len(cfgs)
    return json.loads(line[len("FERBENCH-PROBE "):])


def _fingerprint(cfg: RunConfig, result: dict[str, Any], state: str) -> dict[str, Any]:
    base = {"key": fingerprint_key(cfg), "probe": PROBE_VERSION, "settings": key_settings(cfg),
            "source": state[:16]}
    if "unavailable" in result:
        return {**base, "unavailable": result["unavailable"]}
    return {**base, "digest": digest(result["vector"], result["exact"]), **result}


def probe(cfg: RunConfig) -> dict[str, Any]:
    """The fingerprint of `cfg`'s method under its settings, probed now (not cached)."""
    return _fingerprint(cfg, run_probes([cfg])[0], code_state())


def same_behaviour(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether `b` (newer) behaves as `a` (older): same key and probe version, every value of `a` present in `b`
    and equal within tolerance (values `b` adds are new logs, not changes), every exact entry equal."""
    if not a or not b or a.get("key") != b.get("key") or a.get("probe") != b.get("probe"):
        return False
    if "vector" not in a or "vector" not in b:
        return False
    if a.get("digest") is not None and a.get("digest") == b.get("digest") and a.get("labels") == b.get("labels"):
        return True
    return not changed_values(a, b, most=1)


def changed_values(old: dict[str, Any], new: dict[str, Any], most: int = 3) -> list[str]:
    """What moved between two fingerprints of one key, for a legend: the first `most` values of `old` that are gone
    or out of tolerance in `new`, and exact entries that differ."""
    now = dict(zip(new.get("labels") or [], new.get("vector") or [], strict=True))
    out = []
    for label, x in zip(old.get("labels") or [], old.get("vector") or [], strict=True):
        y = now.get(label)
        if y is None:
            out.append(f"{label} no longer produced")
        elif not (math.isclose(x, y, rel_tol=RTOL, abs_tol=ATOL) or (math.isnan(x) and math.isnan(y))):
            out.append(f"{label} {x:.4g} -> {y:.4g}")
        if len(out) >= most:
            return out
    new_exact = new.get("exact") or {}
    out += [f"{k} {v[:12]} -> {str(new_exact.get(k))[:12]}" for k, v in sorted((old.get("exact") or {}).items())
            if new_exact.get(k) != v]
    return out[:most]


# ---- the cache --------------------------------------------------------------------------------------------------


def _cache_file(state: str) -> Path:
    return default_cache_dir() / "fingerprints" / f"{state[:16]}.json"


def current_fingerprint(cfg: RunConfig) -> dict[str, Any]:
    """The fingerprint of `cfg`'s key for the code installed now: cached, probed when missing."""
    return current_fingerprints([cfg])[fingerprint_key(cfg)]


def cached_fingerprints() -> tuple[str, dict[str, dict[str, Any]]]:
    """(the code state, the fingerprints cached for it by key). A damaged cache is never trusted: an entry that is
    not a fingerprint of its own key, this probe version and this code state is dropped (and so probed again),
    with one line on stderr saying which file and why."""
    state = code_state()
    path = _cache_file(state)
    if not path.is_file():
        return state, {}
    try:
        data = read_json_file(path, "a fingerprint cache (fingerprints by key)")
    except FERBenchError as e:
        print(f"ferbench: {e}; its fingerprints are computed again", file=sys.stderr)
        return state, {}
    if not isinstance(data, dict):
        print(f"ferbench: {path}: not a mapping of keys to fingerprints (a {type(data).__name__}); its fingerprints "
              "are computed again", file=sys.stderr)
        return state, {}
    problems = {key: why for key, fp in data.items() if (why := _cache_entry_problem(key, fp, state))}
    if problems:
        key, why = next(iter(problems.items()))
        print(f"ferbench: {path}: {len(problems)} of {len(data)} cached fingerprint(s) not valid (entry {key!r}: "
              f"{why}); they are computed again", file=sys.stderr)
    return state, {k: fp for k, fp in data.items() if k not in problems}


def _cache_entry_problem(key: str, fp: Any, state: str) -> str | None:
    """Why cache entry `fp` filed under `key` cannot be used for code state `state`, or None."""
    problem = fingerprint_problem(fp, key)
    if problem:
        return problem
    if fp.get("probe") != PROBE_VERSION:
        return f"probe: version {fp.get('probe')}, not this code's {PROBE_VERSION}"
    if fp.get("source") != state[:16]:
        return f"source: code state {fp.get('source')}, not {state[:16]}"
    return None


def current_fingerprints(cfgs: list[RunConfig], compute: bool = True,
                         announce: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """The fingerprint of each config's key for the code installed now: those cached for this code state, the
    others probed (all in one child process) unless `compute` is false (then absent). `announce` is told before a
    probe starts."""
    state, cached = cached_fingerprints()
    keyed: dict[str, RunConfig] = {}
    for cfg in cfgs:
        keyed.setdefault(fingerprint_key(cfg), cfg)
    missing = [k for k in keyed if k not in cached]
    if missing and compute:
        if announce is not None:
            announce(f"computing {len(missing)} fingerprint(s) for code state {state[:12]} (once per code state; "
                     "--no-probe answers without)")
        for key, result in zip(missing, run_probes([keyed[k] for k in missing]), strict=True):
            cached[key] = _fingerprint(keyed[key], result, state)
        with contextlib.suppress(OSError):  # a read-only cache only costs a recomputation next time
            write_json_atomic(_cache_file(state), cached)
    return {k: cached[k] for k in keyed if k in cached}


def config_of_fingerprint(fp: dict[str, Any]) -> RunConfig:
    """A config of the fingerprint's key (from its `settings`): what re-probing it needs."""
    if "settings" not in fp:
        raise FERBenchError(f"fingerprint {fp.get('key')!r} has no settings (written by probe version "
                            f"{fp.get('probe')}); it cannot be re-probed")
    return config_of_settings(fp["settings"])


def config_of_record(record: dict[str, Any]) -> RunConfig:
    """The config a record was trained with (its fingerprint key is computed from it)."""
    return config_from_dict(copy.deepcopy(record["config"]))
