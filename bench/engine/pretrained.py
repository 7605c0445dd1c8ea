"""Backbone weights from a local checkpoint file: read, matched to the model's tensors, then loaded or refused.

A file is a state dict, or a dict holding one under "state_dict" (the MS-Celeb-1M ResNet-18 of the Ada-CM
lineage, torchvision key names, which timm's `resnet18` shares) or "model" (MAE / SSFER releases); `.safetensors`
files too. A file key matches a model key as it is, or without a "module." prefix (DataParallel), and then
without "backbone." (a FERBench model file) or "encoder." (a FERBench MAE stage file). A ViT's position
embedding is resampled when its grid differs, as timm does when it loads weights at another image size.

`load_pretrained` refuses a file that leaves any backbone tensor at its random initialisation (a key
missing, or a shape that does not fit): a run then cannot claim a start it never had. Keys the backbone
does not have (a classifier, an MAE decoder) are reported and ignored.
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.errors import FERBenchError
from bench.results.record import sha256_file

CONTAINER_KEYS = ("state_dict", "model")  # where released checkpoints keep their state dict
STRIPPED_PREFIXES = ("backbone.", "encoder.")  # tried after "module." when a key does not match as it is
NOT_WEIGHTS = ("num_batches_tracked",)  # BatchNorm counters: not part of what a checkpoint must give


def read_checkpoint(path: str | Path, where: str) -> dict[str, Tensor]:
    """The tensors of checkpoint `path` by key; `where` names the setting in errors (`model.pretrained_file`)."""
    p = Path(path)
    if not p.is_file():
        raise FERBenchError(f"{where} {p}: file not found (weights load only from local files)")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(p))
        else:
            # weights only; the released SSFER checkpoint also pickles its argparse Namespace
            with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
                # torch warns (two lines) about a pickle protocol it may not read before failing on a plain pickle
                warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
                try:
                    obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError:  # files in torch's legacy format cannot be memory-mapped
                    obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read a user's file is that file's problem
        text = str(e)
        if "WeightsUnpickler error:" in text:  # not a checkpoint, or one that pickles code objects
            text = "torch.load, weights only: " + text.split("WeightsUnpickler error:", 1)[1].strip()
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        raise FERBenchError(f"{where} {p}: not a readable checkpoint ({first[:200]})") from e
    for key in CONTAINER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise FERBenchError(f"{where} {p}: holds no tensors (expected a state dict, or one under "
                            f"{' or '.join(repr(k) for k in CONTAINER_KEYS)})")
    return tensors


@dataclass
class Match:
    """How a checkpoint's tensors map onto a model's state dict."""

    tensors: dict[str, Tensor] = field(default_factory=dict)  # model key -> the file's tensor, ready to load
    missing: list[str] = field(default_factory=list)  # model keys the file does not give
    unexpected: list[str] = field(default_factory=list)  # file keys the model does not have
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # key, file, model
    resampled: list[str] = field(default_factory=list)
    model_tensors: int = 0


def _candidates(key: str) -> list[str]:
    base = key.removeprefix("module.")
    return [key, base, *(base.removeprefix(p) for p in STRIPPED_PREFIXES if base.startswith(p))]


def match_state_dict(model: nn.Module, tensors: dict[str, Tensor]) -> Match:
    """Match file `tensors` to `model`'s state dict (which may live on the meta device: only shapes are read)."""
    own = model.state_dict()
    m = Match(model_tensors=sum(not k.endswith(NOT_WEIGHTS) for k in own))  # counters are not counted
    for key, value in tensors.items():
        name = next((c for c in _candidates(key) if c in own), None)
        if name is None:
            m.unexpected.append(key)
            continue
        target = tuple(own[name].shape)
        if name == "pos_embed" and tuple(value.shape) != target and hasattr(model, "patch_embed"):
            from timm.layers import resample_abs_pos_embed

            grid = [int(g) for g in model.patch_embed.grid_size]
            value = resample_abs_pos_embed(value, new_size=grid, num_prefix_tokens=int(
                getattr(model, "num_prefix_tokens", 1)))
            m.resampled.append(name)
        if tuple(value.shape) != target:
            m.mismatched.append((name, tuple(value.shape), target))
            continue
        m.tensors[name] = value
    m.missing = [k for k in own if k not in m.tensors and not k.endswith(NOT_WEIGHTS)]
    return m


def check_match(m: Match, path: str | Path, where: str, what: str) -> None:
    """Refuse a file that leaves any of `what`'s tensors unloaded: one line naming the first and the count."""
    if m.mismatched:
        key, got, want = m.mismatched[0]
        raise FERBenchError(f"{where} {path}: {len(m.mismatched)} tensor(s) do not fit {what}: {key} is "
                            f"{list(got)} in the file, {list(want)} in the model")
    if m.missing:
        seen = ", ".join(m.unexpected[:3]) or "none"
        raise FERBenchError(f"{where} {path}: {len(m.missing)} of {m.model_tensors} tensors of {what} are not in the "
                            f"file (first: {m.missing[0]}; the file's unmatched keys start: {seen})")


def fitting_checkpoint(model: nn.Module, path: str | Path, where: str, what: str) -> Match:
    """The match of checkpoint `path` to `model` (which may live on the meta device), or one line if it does not
    fit: what `check_model` asks before any data is prepared, and `load_pretrained` before it loads."""
    m = match_state_dict(model, read_checkpoint(path, where))
    check_match(m, path, where, what)
    return m


def load_pretrained(model: nn.Module, path: str | Path, where: str, what: str) -> dict[str, Any]:
    """Load every tensor of `model` from `path`, or stop with one line; returns what the record keeps."""
    m = fitting_checkpoint(model, path, where, what)
    model.load_state_dict(m.tensors, strict=False)
    return report(m, path)


def report(m: Match, path: str | Path) -> dict[str, Any]:
    """What the record keeps: file, sha256, tensors loaded of the model's (BatchNorm counters not counted),
    missing and unexpected keys, resampled position embeddings."""
    loaded = sum(not k.endswith(NOT_WEIGHTS) for k in m.tensors)
    return {"file": str(path), "sha256": sha256_file(path), "tensors_loaded": loaded,
            "model_tensors": m.model_tensors, "missing": m.missing, "unexpected": sorted(m.unexpected),
            "resampled": m.resampled}
