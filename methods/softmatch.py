"""SoftMatch (Chen et al., ICLR 2023): truncated-Gaussian sample weights with uniform alignment.

As in USB `semilearn/algorithms/softmatch` (reference/methods.md §7):
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

import torch
from torch import Tensor, nn

from bench.method import (
    Batch,
    Method,
    StepContext,
    StepOutput,
    cross_entropy_masked_mean,
    this_process_only,
    weak_strong_forward,
)
from bench.registry import register_method


@register_method("softmatch")
class SoftMatch(Method):
    views = ("weak", "strong")
    defaults = {"lambda_u": 1.0, "ema_p": 0.999, "n_sigma": 2.0, "dist_align": True, "dist_init": "uniform"}
    argument_ranges = {"lambda_u": "[0, inf)", "ema_p": "[0, 1)", "n_sigma": "(0, inf)"}
    reference = ("Chen et al. 2023; USB semilearn/algorithms/softmatch (ema 0.999, n_sigma 2, uniform alignment; "
                 "dist_init='first_batch' for its DistAlignEMAHook start)")

    def __init__(self, num_classes: int, **hparams: object) -> None:
        super().__init__(num_classes, **hparams)
        self.choice("dist_init", ("uniform", "first_batch"))
        self.p_model = torch.full((num_classes,), 1.0 / num_classes)
        self.p_model_updated = torch.tensor(False)  # an update has run ("first_batch" replaces the start)
        self.mu_t = torch.tensor(1.0 / num_classes)
        self.var_t = torch.tensor(1.0)

    def to(self, device: torch.device) -> SoftMatch:
        self.p_model, self.mu_t, self.var_t, self.p_model_updated = (
            t.to(device) for t in (self.p_model, self.mu_t, self.var_t, self.p_model_updated))
        return self

    def state_dict(self) -> dict:
        return {"p_model": self.p_model.cpu(), "mu_t": self.mu_t.cpu(), "var_t": self.var_t.cpu(),
                "p_model_updated": self.p_model_updated.cpu()}

    def load_state_dict(self, state: dict) -> None:
        device = self.p_model.device
        self.p_model, self.mu_t, self.var_t = (state[k].to(device) for k in ("p_model", "mu_t", "var_t"))
        # checkpoints from before the flag exist only after an update (a checkpoint follows a step)
        self.p_model_updated = state.get("p_model_updated", torch.tensor(True)).to(device)

    def weights(self, probs: Tensor, gather: Callable[[Tensor], Tensor] = this_process_only) -> Tensor:
        """Align (updating p^_model), update the Gaussian's EMAs, and weight each sample; the EMAs move with every
        process's batch (`gather`, as USB's hooks do under DDP)."""
        m = self.hparams["ema_p"]
        if self.hparams["dist_align"]:
            batch_mean = gather(probs).mean(dim=0)
            moved = m * self.p_model + (1 - m) * batch_mean
            if self.hparams["dist_init"] == "first_batch":  # a flag on the device, not a host branch
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
        return torch.exp(-(gap**2) / (2 * self.var_t / self.hparams["n_sigma"] ** 2))

    def training_step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        loss_x, probs, logits_us = weak_strong_forward(model, batch)
        w = self.weights(probs, ctx.gather)
        loss_u = cross_entropy_masked_mean(logits_us.float(), probs.argmax(-1), w)
        loss = loss_x + self.hparams["lambda_u"] * loss_u
        return StepOutput(loss, {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "mask_rate": w.mean().detach()})
