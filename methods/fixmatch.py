"""FixMatch (Sohn et al., NeurIPS 2020), as in USB `semilearn/algorithms/fixmatch` (docs/concepts/methods.md#fixmatch).

L = CE(f(weak(x)), y) + lambda_u * mean_b 1[max p_w >= tau] * CE(f(strong(u)), argmax p_w),
with p_w = softmax(f(weak(u))) detached and the mean over the whole unlabeled batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from bench.method import (
    Batch,
    Method,
    MethodArgs,
    NonNegative,
    Probability,
    StepContext,
    StepOutput,
    arg,
    cross_entropy_masked_mean,
    weak_strong_forward,
)
from bench.registry import register_method


@dataclass
class FixMatchArgs(MethodArgs):
    threshold: Probability = arg(0.95, "tau: USB fixmatch p_cutoff")
    lambda_u: NonNegative = arg(1.0, "USB fixmatch ulb_loss_ratio")


@register_method("fixmatch")
class FixMatch(Method):
    views = ("weak", "strong")
    Args = FixMatchArgs
    reference = "Sohn et al. 2020; USB semilearn/algorithms/fixmatch (tau 0.95, lambda_u 1, hard labels)"

    def training_step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        loss_x, probs, logits_us = weak_strong_forward(model, batch)
        loss_u, mask = self.unlabeled_loss(probs, logits_us)
        loss = loss_x + self.args.lambda_u * loss_u
        return StepOutput(loss, {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(),
                                 "mask_rate": mask.mean().detach()})

    def unlabeled_loss(self, probs_weak: Tensor, logits_strong: Tensor) -> tuple[Tensor, Tensor]:
        """Masked pseudo-label loss and the mask (1 where the weak-view probability passes tau)."""
        max_probs, pseudo = probs_weak.max(dim=-1)
        mask = (max_probs >= self.args.threshold).float()
        return cross_entropy_masked_mean(logits_strong.float(), pseudo, mask), mask
