"""FixMatch (Sohn et al., NeurIPS 2020), as in USB `semilearn/algorithms/fixmatch` (reference/methods.md §7).

L = CE(f(weak(x)), y) + lambda_u * mean_b 1[max p_w >= tau] * CE(f(strong(u)), argmax p_w),
with p_w = softmax(f(weak(u))) detached and the mean over the whole unlabeled batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bench.method import Batch, Method, StepContext, StepOutput, cross_entropy_masked_mean, joint_forward
from bench.registry import register_method


@register_method("fixmatch")
class FixMatch(Method):
    views = ("weak", "strong")
    defaults = {"threshold": 0.95, "lambda_u": 1.0}
    reference = "Sohn et al. 2020; USB semilearn/algorithms/fixmatch (tau 0.95, lambda_u 1, hard labels)"

    def training_step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        x, y = batch.labeled["weak"], batch.labeled["y"]
        uw, us = batch.unlabeled["weak"], batch.unlabeled["strong"]
        logits_x, logits_uw, logits_us = joint_forward(model, x, uw, us)
        loss_x = nn.functional.cross_entropy(logits_x, y)
        loss_u, mask = self.unlabeled_loss(logits_uw, logits_us)
        loss = loss_x + self.hparams["lambda_u"] * loss_u
        return StepOutput(loss, {"loss_x": loss_x.item(), "loss_u": loss_u.item(), "mask_rate": mask.mean().item()})

    def unlabeled_loss(self, logits_weak: Tensor, logits_strong: Tensor) -> tuple[Tensor, Tensor]:
        """Masked pseudo-label loss and the mask (1 where the weak view is confident)."""
        probs = torch.softmax(logits_weak.detach().float(), dim=-1)
        max_probs, pseudo = probs.max(dim=-1)
        mask = (max_probs >= self.hparams["threshold"]).float()
        return cross_entropy_masked_mean(logits_strong.float(), pseudo, mask), mask
