"""The optimiser and its learning-rate schedule, from a run's (or a stage's) config."""

from __future__ import annotations

import math

import torch

from bench.config import RunConfig
from bench.errors import FERBenchError


def build_optimizer(cfg: RunConfig, model: torch.nn.Module, fused: bool = False) -> torch.optim.Optimizer:
    o = cfg.optim
    extra = {"fused": True} if fused else {}
    # No weight decay on biases and normalisation parameters (as USB and timm do).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0, **extra)
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr, betas=tuple(o.betas), **extra)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), **extra)
    raise FERBenchError(f"optim.name={o.name!r}: expected sgd, adam or adamw")


def lr_factor(cfg: RunConfig, step: int) -> float:
    """The factor of `optim.lr` at `step`: warm-up, then the schedule."""
    o, total = cfg.optim, cfg.train.iterations
    if o.warmup_iters and step < o.warmup_iters:
        return (step + 1) / o.warmup_iters
    if o.schedule == "constant":
        return 1.0
    if o.schedule == "cosine":  # FixMatch: lr * cos(7*pi*k / (16*K))
        return math.cos(7 * math.pi * step / (16 * total))
    if o.schedule == "halfcosine":  # MAE / timm CosineLRScheduler: half a cosine to min_lr, then min_lr
        span = o.decay_iters or total
        floor = o.min_lr / o.lr if o.lr else 0.0
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, span) / span))
    raise FERBenchError(f"optim.schedule={o.schedule!r}: expected cosine, halfcosine or constant")


def build_scheduler(cfg: RunConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s))
