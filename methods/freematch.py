"""FreeMatch (Wang et al., ICLR 2023): self-adaptive thresholds and a fairness term.

As in USB `semilearn/algorithms/freematch` (docs/concepts/methods.md#freematch), with EMA momentum m:
- tau_t <- m tau_t + (1-m) mean(max p_w);  p~_t <- m p~_t + (1-m) mean(p_w);
  h_t <- m h_t + (1-m) hist(argmax p_w) / B   (all initialised to 1/C), updated before masking;
- mask = 1[max p_w >= tau_t * p~_t(y^) / max_c p~_t(c)];
- fairness L_f = sum_c SumNorm(p~_t / h_t)_c * log SumNorm(mean p_s / h_s)_c over the masked strong
  predictions (p_s, with h_s their argmax histogram): the sign of the paper and of USB's code;
- L = L_x + lambda_u * L_u + lambda_e * L_f (L_f = 0 when nothing is masked in).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bench.method import (
    Batch,
    Decay,
    Method,
    MethodArgs,
    NonNegative,
    ProbeView,
    StepContext,
    StepOutput,
    arg,
    cross_entropy_masked_mean,
    this_process_only,
    weak_strong_forward,
)
from bench.registry import register_method


def _safe_inverse(x: Tensor) -> Tensor:
    return torch.nan_to_num(1.0 / x, nan=0.0, posinf=0.0, neginf=0.0)


def fairness_loss(mask: Tensor, logits_strong: Tensor, p_model: Tensor, label_hist: Tensor) -> Tensor:
    """USB's `entropy_loss`: the fairness term on the masked-in strong predictions; 0 (with a graph) when none
    is masked in. Computed on the whole batch with the mask as weights, so the subset's size is never read on
    the host (every intermediate stays finite, so the zero has finite gradients)."""
    m = mask.float()[:, None]
    count = m.sum()
    probs_s = logits_strong.softmax(dim=-1)
    hist_s = (nn.functional.one_hot(probs_s.argmax(-1), logits_strong.shape[1]).to(probs_s.dtype) * m).sum(0)
    hist_s = hist_s / count.clamp(min=1)
    target = p_model * _safe_inverse(label_hist)
    target = target / target.sum()
    mean_s = (probs_s * m).sum(0) / count.clamp(min=1) * _safe_inverse(hist_s).detach()
    mean_s = mean_s / mean_s.sum().clamp(min=torch.finfo(mean_s.dtype).tiny)
    return (target * torch.log(mean_s + 1e-12)).sum() * (count > 0)


@dataclass
class FreeMatchArgs(MethodArgs):
    lambda_u: NonNegative = arg(1.0, "USB freematch ulb_loss_ratio")
    lambda_e: NonNegative = arg(0.001, "USB freematch ent_loss_ratio (CIFAR-10-40 config; its argparse default: 0.01)")
    ema_p: Decay = arg(0.999, "USB freematch ema_p", per_step_decay=True)


@register_method("freematch")
class FreeMatch(Method):
    views = ("weak", "strong")
    Args = FreeMatchArgs
    reference = "Wang et al. 2023; USB semilearn/algorithms/freematch (ema_p 0.999, ent_loss_ratio 0.001)"

    def __init__(self, num_classes: int, **arguments: object) -> None:
        super().__init__(num_classes, **arguments)
        self.add_state("time_p", torch.tensor(1.0 / num_classes))
        self.add_state("p_model", torch.full((num_classes,), 1.0 / num_classes))
        self.add_state("label_hist", torch.full((num_classes,), 1.0 / num_classes))

    def probe_state(self, view: ProbeView) -> None:
        """A run in progress: the global threshold, class distribution and pseudo-label histogram at the unlabeled
        pool's statistics."""
        max_probs, pseudo = view.unlabeled_probs.max(dim=-1)
        self.time_p = max_probs.mean()
        self.p_model = view.unlabeled_probs.mean(dim=0)
        hist = torch.bincount(pseudo, minlength=self.num_classes).to(self.p_model.dtype)
        self.label_hist = hist / hist.sum()

    def mask(self, probs: Tensor, gather: Callable[[Tensor], Tensor] = this_process_only) -> Tensor:
        """Update the EMAs with every process's batch (`gather`, as USB's hook does under DDP), then threshold
        this process's."""
        m = self.args.ema_p
        max_probs, pseudo = probs.max(dim=-1)
        all_probs = gather(probs)
        all_max, all_pseudo = all_probs.max(dim=-1)
        self.time_p = m * self.time_p + (1 - m) * all_max.mean()
        self.p_model = m * self.p_model + (1 - m) * all_probs.mean(dim=0)
        hist = torch.bincount(all_pseudo, minlength=self.num_classes).to(probs.dtype)
        self.label_hist = m * self.label_hist + (1 - m) * hist / hist.sum()
        modulation = self.p_model / self.p_model.max()
        return (max_probs >= self.time_p * modulation[pseudo]).float()

    def training_step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        loss_x, probs, logits_us = weak_strong_forward(model, batch)
        mask = self.mask(probs, ctx.gather)
        loss_u = cross_entropy_masked_mean(logits_us.float(), probs.argmax(-1), mask)
        loss_f = fairness_loss(mask, logits_us.float(), self.p_model, self.label_hist)
        loss = loss_x + self.args.lambda_u * loss_u + self.args.lambda_e * loss_f
        return StepOutput(loss, {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "loss_fair": loss_f.detach(),
                                 "mask_rate": mask.mean().detach(), "tau_global": self.time_p.detach().clone()})
