"""Mean Teacher (Tarvainen & Valpola, NeurIPS 2017), the standard form (reference/methods.md §7).

L = L_x + lambda_u * r(t) * MSE(softmax f_student(aug2(u)), softmax f_teacher(aug1(u))), with the
teacher the run's EMA model (no gradient) and r(t) = clip(t / (0.4 T), 0, 1). USB's HEAD computes
the student term from the teacher's output, so its L_u has no gradient; here the student's is used.
The MSE is averaged over classes and samples, as USB's `consistency_loss(..., "mse")`.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.method import Batch, Method, StepContext, StepOutput
from bench.registry import register_method


@register_method("meanteacher")
class MeanTeacher(Method):
    views = ("weak", "weak2")
    requires_ema = True
    defaults = {"lambda_u": 50.0, "rampup_frac": 0.4}
    argument_ranges = {"lambda_u": "[0, inf)", "rampup_frac": "(0, 1]"}
    reference = ("Tarvainen & Valpola 2017; USB meanteacher (lambda_u 50, linear ramp-up over 40%, mu 1), "
                 "with the student's gradient restored")

    def rampup(self, step: int, total: int) -> float:
        return min(1.0, max(0.0, step / (self.hparams["rampup_frac"] * total)))

    def training_step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        x, y = batch.labeled["weak"], batch.labeled["y"]
        u1, u2 = batch.unlabeled["weak"], batch.unlabeled["weak2"]
        logits = model(torch.cat([x, u2]))
        logits_x, logits_student = logits[: len(x)], logits[len(x) :]
        with torch.no_grad():
            logits_teacher = ctx.ema_model(u1)
        loss_x = nn.functional.cross_entropy(logits_x, y)
        loss_u = consistency_mse(logits_student.float(), logits_teacher.float())
        ramp = self.rampup(ctx.step, ctx.total_steps)
        loss = loss_x + self.hparams["lambda_u"] * ramp * loss_u
        return StepOutput(loss, {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "rampup": ramp})


def consistency_mse(logits_student: torch.Tensor, logits_teacher: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(logits_student.softmax(-1), logits_teacher.detach().softmax(-1))
