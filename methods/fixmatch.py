"""FixMatch (Sohn et al., NeurIPS 2020), as in USB `semilearn/algorithms/fixmatch` (reference/methods.md §7).

L = CE(f(weak(x)), y) + lambda_u * mean_b 1[max p_w >= tau] * CE(f(strong(u)), argmax p_w),
with p_w = softmax(f(weak(u))) detached and the mean over the whole unlabeled batch.
"""

from __future__ import annotations

from torch import Tensor, nn

from bench.method import Batch, Method, StepContext, StepOutput, cross_entropy_masked_mean, weak_strong_forward
from bench.registry import register_method


@register_method("fixmatch")
class FixMatch(Method):
    views = ("weak", "strong")
    defaults = {"threshold": 0.95, "lambda_u": 1.0}
    argument_ranges = {"threshold": "[0, 1]", "lambda_u": "[0, inf)"}
    reference = "Sohn et al. 2020; USB semilearn/algorithms/fixmatch (tau 0.95, lambda_u 1, hard labels)"

    def training_step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        loss_x, probs, logits_us = weak_strong_forward(model, batch)
        loss_u, mask = self.unlabeled_loss(probs, logits_us)
        loss = loss_x + self.hparams["lambda_u"] * loss_u
        return StepOutput(loss, {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(),
                                 "mask_rate": mask.mean().detach()})

    def unlabeled_loss(self, probs_weak: Tensor, logits_strong: Tensor) -> tuple[Tensor, Tensor]:
        """Masked pseudo-label loss and the mask (1 where the weak-view probability passes tau)."""
        max_probs, pseudo = probs_weak.max(dim=-1)
        mask = (max_probs >= self.hparams["threshold"]).float()
        return cross_entropy_masked_mean(logits_strong.float(), pseudo, mask), mask
