"""Speed settings of a run (how fast, not what): memory layout, torch.compile, fused optimiser kernels.

Mixed precision is Accelerate's (`train.mixed_precision`, autocast around the training step). Each
setting is checked before anything runs and what was actually used is written to the record's
`performance` block, including where a requested speed-up was not available (a fused optimiser on
a CPU host).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench.config import RunConfig


def fused_optimizer(cfg: RunConfig, device: torch.device, deepspeed: bool = False) -> tuple[bool, str | None]:
    """(use torch's fused optimiser kernels, why not when not): fused on CUDA only, and not under DeepSpeed,
    which steps its own optimiser; a CPU host keeps the default implementation so its numbers do not move."""
    if not cfg.train.fused_optimizer:
        return False, "train.fused_optimizer=false"
    if deepspeed:
        return False, "DeepSpeed steps the optimiser"
    if device.type != "cuda":
        return False, f"no fused kernels used on {device.type}"
    return True, None


def apply_channels_last(model: nn.Module, enabled: bool) -> nn.Module:
    return model.to(memory_format=torch.channels_last) if enabled else model


def compile_model(model: nn.Module, mode: str) -> nn.Module:
    """Compile `model`'s forward in place (`nn.Module.compile`): the module and its state-dict keys stay as
    they are, so checkpoints, the EMA copy and `unwrap_model` are unaffected."""
    if mode != "none":
        model.compile(mode=None if mode == "default" else mode)
    return model


def performance_block(cfg: RunConfig, feed: Any, device: torch.device, fused: tuple[bool, str | None],
                      images_per_s: float) -> dict[str, Any]:
    """The record's account of how the run was made fast (or not)."""
    return {
        "augment_on": feed.augment_on,
        "images_on": feed.where,  # device | host (the memory-mapped cache, gathered through pinned buffers on CUDA)
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "workers": cfg.data.workers if feed.augment_on == "cpu" else 0,
        "mixed_precision": cfg.train.mixed_precision,
        "channels_last": cfg.train.channels_last,
        "compile": cfg.train.compile,
        "fused_optimizer": fused[0],
        "fused_optimizer_note": fused[1],
        "images_per_s": images_per_s,
    }
