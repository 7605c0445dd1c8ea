"""Supervised baseline: cross-entropy on the labeled subset only (docs/concepts/methods.md#supervised)."""

from __future__ import annotations

from torch import nn

from bench.method import Batch, Method, StepContext, StepOutput
from bench.registry import register_method


@register_method("supervised")
class Supervised(Method):
    views = ()
    reference = "CE on the labeled subset; same aug/optimiser/iterations/EMA as the SSL methods [USB supervised]"

    def training_step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        logits = model(batch.labeled["weak"])
        loss = nn.functional.cross_entropy(logits, batch.labeled["y"])
        return StepOutput(loss, {"loss_x": loss.detach()})
