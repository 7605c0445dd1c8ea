"""Pseudo-Label (Lee, ICML 2013 workshop) as a FERBench method plugin, the worked example of a third-party method.

The model's own confident predictions on unlabeled images become hard targets for those same images:

    L = CE(f(weak(x)), y) + lambda_u * r(t) * mean_b 1[max p_b >= tau] * CE(f(weak(u_b)), argmax p_b),

with p = softmax(f(weak(u))) detached and r(t) = min(1, t / (rampup_frac * T)) a linear ramp-up of the unlabeled
weight. One unlabeled view, no state, nothing read on the host inside the step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from bench.method import (
    Batch,
    Interval,
    Method,
    MethodArgs,
    NonNegative,
    Probability,
    StepContext,
    StepOutput,
    arg,
    cross_entropy_masked_mean,
    joint_forward,
)
from bench.registry import register_method


@dataclass
class PseudoLabelArgs(MethodArgs):
    threshold: Probability = arg(0.95, "tau: the confidence a prediction needs to become a target")
    lambda_u: NonNegative = arg(1.0, "the unlabeled loss's weight once ramped up")
    rampup_frac: Annotated[float, Interval("(0, 1]")] = arg(0.4, "share of training over which it ramps up from 0")


@register_method("pseudolabel")
class PseudoLabel(Method):
    views = ("weak",)
    Args = PseudoLabelArgs
    reference = "Lee 2013, Pseudo-Label: hard targets above a confidence threshold, linear ramp-up of their weight"
    # a tiny model's predictions never reach 0.95 in the checker's 12 steps: a lower threshold exercises the mask
    check_settings = {"method_args.threshold": 0.3}

    def training_step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        a = self.args
        logits_x, logits_u = joint_forward(model, batch.labeled["weak"], batch.unlabeled["weak"])
        loss_x = F.cross_entropy(logits_x.float(), batch.labeled["y"])
        with torch.no_grad():
            confidence, targets = torch.softmax(logits_u.float(), dim=-1).max(dim=-1)
            mask = (confidence >= a.threshold).float()
        loss_u = cross_entropy_masked_mean(logits_u.float(), targets, mask)
        ramp = min(1.0, ctx.step / (a.rampup_frac * ctx.total_steps))  # Python numbers: no host read
        return StepOutput(loss_x + a.lambda_u * ramp * loss_u,
                          {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "mask_rate": mask.mean()})
