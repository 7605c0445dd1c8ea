"""SoftMatch (Chen et al., ICLR 2023): truncated-Gaussian sample weights with uniform alignment.

As in USB `semilearn/algorithms/softmatch` (docs/concepts/methods.md#softmatch):
- uniform distribution alignment, for the weights only: p_a = SumNorm(p_w * (1/C) / p^_model), with
  p^_model <- m p^_model + (1-m) mean(p_w) updated first. Its start (`dist_init`): "uniform" (default, FERBench's
  choice: p^_model starts at 1/C, so the first update is (1-m) mean(p_w) + m/C) or "first_batch" (USB's
  `DistAlignEMAHook`: p^_model is None until the first unlabeled batch, which sets it to that batch's
  mean(p_w); the EMA runs from the second batch on);
- mu_t <- m mu_t + (1-m) mean(max p_a), var_t <- m var_t + (1-m) var(max p_a) (unbiased), init 1/C, 1;
- w = exp(-min(max p_a - mu_t, 0)^2 / (2 var_t / n_sigma^2)), n_sigma = 2;
- L_u = mean_b w_b CE(f(strong(u_b)), argmax p_w) with the pseudo-label of the *unaligned* p_w.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from bench.method import (
    Batch,
    Decay,
    Method,
    MethodArgs,
    NonNegative,
    Positive,
    ProbeView,
    StepContext,
    StepOutput,
    arg,
    cross_entropy_masked_mean,
    this_process_only,
    weak_strong_forward,
)
from bench.registry import register_method


@dataclass
class SoftMatchArgs(MethodArgs):
    lambda_u: NonNegative = arg(1.0, "USB softmatch ulb_loss_ratio")
    ema_p: Decay = arg(0.999, "USB softmatch ema_p", per_step_decay=True)
    n_sigma: Positive = arg(2.0, "USB softmatch n_sigma")
    dist_align: bool = arg(True, "USB softmatch dist_align (uniform target)")
    dist_init: Literal["uniform", "first_batch"] = arg(
        "uniform", "FERBench's start 1/C; 'first_batch' is USB's DistAlignEMAHook start")


@register_method("softmatch")
class SoftMatch(Method):
    views = ("weak", "strong")
    Args = SoftMatchArgs
    reference = ("Chen et al. 2023; USB semilearn/algorithms/softmatch (ema 0.999, n_sigma 2, uniform alignment; "
                 "dist_init='first_batch' for its DistAlignEMAHook start)")

    def __init__(self, num_classes: int, **arguments: object) -> None:
        super().__init__(num_classes, **arguments)
        self.add_state("p_model", torch.full((num_classes,), 1.0 / num_classes))
        # an update has run ("first_batch" replaces the start); checkpoints from before this flag exist only after
        # an update (a checkpoint follows a step)
        self.add_state("p_model_updated", torch.tensor(False), if_missing=torch.tensor(True))
        self.add_state("mu_t", torch.tensor(1.0 / num_classes))
        self.add_state("var_t", torch.tensor(1.0))

    def probe_state(self, view: ProbeView) -> None:
        """A run in progress: p^_model and the Gaussian's mean and variance at the unlabeled pool's statistics."""
        max_probs = view.unlabeled_probs.max(dim=-1).values
        self.p_model = view.unlabeled_probs.mean(dim=0)
        self.p_model_updated = torch.ones_like(self.p_model_updated)
        self.mu_t, self.var_t = max_probs.mean(), max_probs.var(unbiased=True)

    def weights(self, probs: Tensor, gather: Callable[[Tensor], Tensor] = this_process_only) -> Tensor:
        """Align (updating p^_model), update the Gaussian's EMAs, and weight each sample; the EMAs move with every
        process's batch (`gather`, as USB's hooks do under DDP)."""
        m = self.args.ema_p
        if self.args.dist_align:
            batch_mean = gather(probs).mean(dim=0)
            moved = m * self.p_model + (1 - m) * batch_mean
            if self.args.dist_init == "first_batch":  # a flag on the device, not a host branch
                moved = torch.where(self.p_model_updated, moved, batch_mean)
            self.p_model = moved
            self.p_model_updated = torch.ones_like(self.p_model_updated)
            probs = probs * (1.0 / self.num_classes + 1e-6) / (self.p_model + 1e-6)
            probs = probs / probs.sum(dim=-1, keepdim=True)
        max_probs = probs.max(dim=-1).values
        all_max = gather(max_probs)
        self.mu_t = m * self.mu_t + (1 - m) * all_max.mean()
        self.var_t = m * self.var_t + (1 - m) * all_max.var(unbiased=True)
        gap = torch.clamp(max_probs - self.mu_t, max=0.0)
        return torch.exp(-(gap**2) / (2 * self.var_t / self.args.n_sigma ** 2))

    def training_step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        loss_x, probs, logits_us = weak_strong_forward(model, batch)
        w = self.weights(probs, ctx.gather)
        loss_u = cross_entropy_masked_mean(logits_us.float(), probs.argmax(-1), w)
        loss = loss_x + self.args.lambda_u * loss_u
        return StepOutput(loss, {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "mask_rate": w.mean().detach()})
