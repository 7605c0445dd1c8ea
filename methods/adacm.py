"""Ada-CM (Li et al., CVPR 2022): adaptive confidence margins, as in hangyu94/Ada-CM
(docs/concepts/methods.md#ada-cm).

- Class-wise thresholds T_c (init 0.8) recomputed every `epoch_iters` iterations from the EMA model on
  weak views of the labeled set: T_c = max(0.8, 0.97 * sigmoid(t) * mean max-prob of the correctly
  predicted class-c samples), t = epochs completed; T_c = 0.8 when none is correct.
- p~ = (softmax f(weak1 u) + softmax f(weak2 u)) / 2, y^ = argmax p~; subset I: max p~ >= T_{y^}.
- L_u = (1/B) sum_b 1[b in I] CE(f(strong u_b), y^_b);
- L_s = NT-Xent (SupCon without labels, tau 0.07) over the L2-normalised features of the two weak views
  of the subset-II samples (0 when subset II is empty);
- L = 0.5 L_x + L_u + 0.1 L_s.
The rest of Ada-CM's step is the `adacm` recipe (bench/configs/recipes/adacm.yaml), not this file: its head
(Dropout(0.5), L2-normalised feature, linear: `model.head=normalized`), separate forwards, views, Adam, and the
"customised weight decay" of the student after each EMA update (`train.student_decay`). Under the harness protocol
the features are the backbone's and the parts share one forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bench.method import (
    Batch,
    Count,
    HookContext,
    Method,
    MethodArgs,
    NonNegative,
    Positive,
    Probability,
    StepContext,
    StepOutput,
    arg,
    cross_entropy_masked_mean,
    joint_forward,
)
from bench.registry import register_method


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.07, members: Tensor | None = None) -> Tensor:
    """SimCLR's NT-Xent (SupCon with labels=None, base temperature = temperature) over pairs (z1_i, z2_i).

    With `members` (bool, one per pair): the loss of the member pairs alone, as if the others were not in the
    batch (they are masked out of every denominator), 0 with a graph when there are none. Computed on the whole
    batch, so the subset's size is never read on the host."""
    z = nn.functional.normalize(torch.cat([z1, z2]), dim=-1)
    n = len(z1)
    sim = z @ z.T / temperature
    excluded = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    if members is not None:
        excluded = excluded | ~torch.cat([members, members])[None, :]
    sim = sim.masked_fill(excluded, float("-inf"))
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    if members is None:
        return nn.functional.cross_entropy(sim, positive)
    rows = torch.cat([members, members]).float()
    per_row = nn.functional.cross_entropy(sim.masked_fill(rows[:, None] == 0, 0.0), positive, reduction="none")
    return (per_row * rows).sum() / rows.sum().clamp(min=1)


@dataclass
class AdaCMArgs(MethodArgs):
    initial_threshold: Probability = arg(0.8, "T0, also each class threshold's floor (main.py)")
    scale: Probability = arg(0.97, "T_c = scale * sigmoid(epoch) * mean confidence (main.py)")
    epoch_iters: Count = arg(800, "iterations between threshold updates: one epoch of the code")
    temperature: Positive = arg(0.07, "NT-Xent temperature (SupConLoss)")
    lambda_x: NonNegative = arg(0.5, "weight of L_x (main.py)")
    lambda_u: NonNegative = arg(1.0, "weight of L_u (main.py)")
    lambda_s: NonNegative = arg(0.1, "weight of the contrastive L_s (main.py)")


@register_method("adacm")
class AdaCM(Method):
    views = ("weak", "weak2", "strong")
    Args = AdaCMArgs
    reference = "Li et al. CVPR 2022; hangyu94/Ada-CM main.py (T0 0.8, 0.97*sigmoid(epoch), 0.5/1/0.1)"
    check_settings = {"method_args.epoch_iters": 4}  # thresholds recomputed at 4, 8 and 12

    def __init__(self, num_classes: int, **arguments: object) -> None:
        super().__init__(num_classes, **arguments)
        self.add_state("thresholds", torch.full((num_classes,), float(self.args.initial_threshold)))

    def hook_every(self) -> int | None:
        return int(self.args.epoch_iters)

    def update_thresholds(self, probs: Tensor, labels: Tensor, epoch: int) -> None:
        floor = float(self.args.initial_threshold)
        conf, pred = probs.max(dim=-1)
        factor = self.args.scale / (1.0 + math.exp(-epoch))
        new = torch.full_like(self.thresholds, floor)
        for c in range(self.num_classes):
            correct = (labels == c) & (pred == c)
            if correct.any():
                new[c] = max(floor, factor * conf[correct].mean().item())
        self.thresholds = new

    def on_hook(self, ctx: HookContext) -> None:
        probs, labels = ctx.predict_labeled()
        self.update_thresholds(probs, labels, ctx.epoch)

    @staticmethod
    def pseudo_probs(logits_w1: Tensor, logits_w2: Tensor) -> Tensor:
        """The pseudo-label distribution: the mean of the two weak views' softmax (main.py), without gradient."""
        return ((logits_w1.float().softmax(-1) + logits_w2.float().softmax(-1)) / 2).detach()

    def partition(self, logits_w1: Tensor, logits_w2: Tensor) -> tuple[Tensor, Tensor]:
        """(pseudo-labels y^, subset-I mask as bool) from the two weak views' logits."""
        max_p, pseudo = self.pseudo_probs(logits_w1, logits_w2).max(dim=-1)
        return pseudo, max_p >= self.thresholds[pseudo]

    def contrastive(self, feat_w1: Tensor, feat_w2: Tensor, confident: Tensor) -> Tensor:
        """L_s: NT-Xent over the subset-II samples' two weak views (0, with a graph, when there are none)."""
        return nt_xent(feat_w1.float(), feat_w2.float(), self.args.temperature, members=~confident)

    def losses(self, logits_w1: Tensor, logits_w2: Tensor, logits_s: Tensor, feat_w1: Tensor,
               feat_w2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(L_u, L_s, subset-I mask) from the unlabeled logits and features."""
        pseudo, confident = self.partition(logits_w1, logits_w2)
        loss_u = cross_entropy_masked_mean(logits_s.float(), pseudo, confident.float())
        return loss_u, self.contrastive(feat_w1, feat_w2, confident), confident.float()

    def training_step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        x, y = batch.labeled["weak"], batch.labeled["y"]
        u = batch.unlabeled
        logits_x, l1, l2, ls, _, f1, f2, _ = joint_forward(model, x, u["weak"], u["weak2"], u["strong"],
                                                          return_features=True)
        loss_x = nn.functional.cross_entropy(logits_x, y)
        loss_u, loss_s, mask = self.losses(l1, l2, ls, f1, f2)
        a = self.args
        loss = a.lambda_x * loss_x + a.lambda_u * loss_u + a.lambda_s * loss_s
        return StepOutput(loss, {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "loss_s": loss_s.detach(),
                                 "mask_rate": mask.mean().detach(),
                                 "threshold_mean": self.thresholds.mean().detach(),
                                 # how confident the pseudo-labels are, thresholded or not
                                 "confidence_mean": self.pseudo_probs(l1, l2).max(dim=-1).values.mean()})
