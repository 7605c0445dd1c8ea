"""FlexMatch (Zhang et al., NeurIPS 2021): curriculum pseudo-labelling with class-wise flexible thresholds.

As in USB `semilearn/algorithms/flexmatch` (docs/concepts/methods.md#flexmatch):
- selected_label[i] is the last class unlabeled sample i was confidently (>= tau) predicted as, or -1.
- sigma_c = #{selected_label == c}; beta_c = sigma_c / max(max_c' sigma_c', #unused) with warm-up
  (the -1 bucket counts in the max), else sigma_c / max_c' sigma_c'.
- mask_i = 1[max p_i >= tau * M(beta_{y_i})], M(b) = b / (2 - b) (the convex mapping).
The mask uses the thresholds from before this batch; the batch's confident samples then update
selected_label and beta for the next step, as USB's hook does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bench.method import (
    Batch,
    Method,
    MethodArgs,
    NonNegative,
    Probability,
    ProbeView,
    SetupInfo,
    StepContext,
    StepOutput,
    arg,
    cross_entropy_masked_mean,
    this_process_only,
    weak_strong_forward,
)
from bench.registry import register_method


@dataclass
class FlexMatchArgs(MethodArgs):
    threshold: Probability = arg(0.95, "tau: USB flexmatch p_cutoff")
    lambda_u: NonNegative = arg(1.0, "USB flexmatch ulb_loss_ratio")
    thresh_warmup: bool = arg(True, "USB flexmatch thresh_warmup: the unused (-1) bucket counts in the max")


@register_method("flexmatch")
class FlexMatch(Method):
    views = ("weak", "strong")
    Args = FlexMatchArgs
    reference = "Zhang et al. 2021; USB semilearn/algorithms/flexmatch (tau 0.95, warm-up, convex mapping)"
    check_settings = {"method_args.threshold": 0.3}  # class-wise learning effects that move at tiny settings

    def setup(self, info: SetupInfo) -> None:
        self.add_state("selected_label", torch.full((info.num_unlabeled,), -1, dtype=torch.long))
        self.add_state("classwise_acc", torch.zeros(self.num_classes))

    def probe_state(self, view: ProbeView) -> None:
        """A run in progress: the unlabeled images above the lowest 40% of confidences hold their pseudo-labels
        (the others none yet, still more than any one class holds), and the class-wise learning effects follow."""
        max_probs, pseudo = view.unlabeled_probs.max(dim=-1)
        self.selected_label = torch.where(max_probs >= max_probs.quantile(0.4), pseudo, torch.full_like(pseudo, -1))
        self._update_classwise_acc()

    def class_thresholds(self) -> Tensor:
        """Each class's threshold: tau times the convex mapping beta / (2 - beta) of its learning effect."""
        beta = self.classwise_acc
        return self.args.threshold * (beta / (2.0 - beta))

    def mask(self, probs: Tensor, idx: Tensor, gather: Callable[[Tensor], Tensor] = this_process_only) -> Tensor:
        """Mask from the current class-wise thresholds, then record the confident predictions of every process's
        batch (`gather`, as USB's hook does under DDP), so all processes keep the same counts."""
        tau = self.args.threshold
        max_probs, pseudo = probs.max(dim=-1)
        mask = (max_probs >= self.class_thresholds()[pseudo]).float()
        all_max, all_pseudo = gather(probs).max(dim=-1)
        all_idx = gather(idx)
        # selected rows write their pseudo-label, the others a spare slot past the end (no host read of the
        # selection's size; duplicates resolve as USB's boolean-indexed write does)
        n = len(self.selected_label)
        slots = torch.where(all_max >= tau, all_idx, torch.full_like(all_idx, n))
        extended = torch.cat([self.selected_label, self.selected_label.new_full((1,), -1)])
        extended[slots] = all_pseudo
        self.selected_label = extended[:n]
        self._update_classwise_acc()
        return mask

    def _update_classwise_acc(self) -> None:
        counts = torch.bincount(self.selected_label + 1, minlength=self.num_classes + 1).float()
        per_class = counts[1:]
        denom = counts.max() if self.args.thresh_warmup else per_class.max()
        # every sample in one bucket (e.g. none selected yet): USB leaves beta as it is (decided on the device)
        self.classwise_acc = torch.where(counts.max() >= len(self.selected_label), self.classwise_acc,
                                         per_class / denom)

    def training_step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        loss_x, probs, logits_us = weak_strong_forward(model, batch)
        mask = self.mask(probs, batch.unlabeled["idx"], ctx.gather)
        loss_u = cross_entropy_masked_mean(logits_us.float(), probs.argmax(-1), mask)
        loss = loss_x + self.args.lambda_u * loss_u
        return StepOutput(loss, {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(),
                                 "mask_rate": mask.mean().detach(),
                                 # the class-wise thresholds in force after this step's update
                                 "threshold_mean": self.class_thresholds().mean().detach()})
