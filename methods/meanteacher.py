"""Mean Teacher (Tarvainen & Valpola, NeurIPS 2017), the standard form
(docs/concepts/methods.md#meanteacher).

L = L_x + lambda_u * r(t) * MSE(softmax f_student(aug2(u)), softmax f_teacher(aug1(u))), with the
teacher the run's EMA model (no gradient) and r(t) = clip(t / (0.4 T), 0, 1). The MSE is averaged over
classes and samples, as USB's `consistency_loss(..., "mse")`. The student term has its gradient, as in
USB 0.3.2 (`semilearn/algorithms/meanteacher/meanteacher.py`); a later USB commit (on HEAD, not in any
release up to 0.3.2) computes it from the teacher's output, which leaves L_u without a gradient.

`teacher_bn` chooses how BatchNorm sees the step's forwards:
- "running" (default): the student's forward over the labeled batch and aug2(u) (`joint_forward`: together, or
  one per part with `train.forward="separate"`); the teacher is the EMA model in eval mode, normalising with the
  EMA's running statistics.
- "batch" (USB 0.3.2's `train_step`): the labeled batch has its own student forward (the only one that
  updates running statistics); the teacher is the EMA weights run in *train* mode (BatchNorm normalises with
  aug1(u)'s own statistics, dropout active) under no_grad; both unlabeled forwards leave the running
  statistics of their model as they were (`bn_controller.freeze_bn`). USB applies the EMA weights to the
  student (`ema.apply_shadow`); here the run's EMA model is put in train mode for the forward, then back in
  its own mode, with its BatchNorm buffers untouched. These forwards are USB's whatever `train.forward` says.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from torch import nn

from bench.method import (
    Batch,
    Interval,
    Method,
    MethodArgs,
    NonNegative,
    StepContext,
    StepOutput,
    arg,
    frozen_batchnorm_stats,
    joint_forward,
)
from bench.registry import register_method


@dataclass
class MeanTeacherArgs(MethodArgs):
    lambda_u: NonNegative = arg(50.0, "USB meanteacher ulb_loss_ratio")
    rampup_frac: Annotated[float, Interval("(0, 1]")] = arg(0.4, "USB meanteacher unsup_warm_up: linear over 40%")
    teacher_bn: Literal["running", "batch"] = arg(
        "running", "'batch' is USB 0.3.2's train-mode teacher with frozen BatchNorm statistics")


@register_method("meanteacher")
class MeanTeacher(Method):
    views = ("weak", "weak2")
    requires_ema = True
    Args = MeanTeacherArgs
    reference = ("Tarvainen & Valpola 2017; USB 0.3.2 meanteacher (lambda_u 50, linear ramp-up over 40%, mu 1; "
                 "teacher_bn='batch' for its train-mode teacher and frozen BatchNorm statistics)")

    def rampup(self, step: int, total: int) -> float:
        return min(1.0, max(0.0, step / (self.args.rampup_frac * total)))

    def training_step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        x, y = batch.labeled["weak"], batch.labeled["y"]
        u1, u2 = batch.unlabeled["weak"], batch.unlabeled["weak2"]
        if self.args.teacher_bn == "batch":  # USB 0.3.2's order: labeled, teacher, student
            logits_x = model(x)
            logits_teacher = batch_stats_forward(ctx.ema_model, u1)
            with frozen_batchnorm_stats(model):
                logits_student = model(u2)
        else:
            logits_x, logits_student = joint_forward(model, x, u2)
            with torch.no_grad():
                logits_teacher = ctx.ema_model(u1)
        loss_x = nn.functional.cross_entropy(logits_x, y)
        loss_u = consistency_mse(logits_student.float(), logits_teacher.float())
        ramp = self.rampup(ctx.step, ctx.total_steps)
        loss = loss_x + self.args.lambda_u * ramp * loss_u
        return StepOutput(loss, {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "rampup": ramp})


@contextmanager
def train_mode(module: nn.Module) -> Iterator[None]:
    """`module` in train mode inside the block; each submodule's own mode is restored after."""
    modes = [(m, m.training) for m in module.modules()]
    module.train()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def batch_stats_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`model(x)` without gradient, in train mode (BatchNorm on x's own statistics, dropout active), leaving the
    model's mode and BatchNorm running statistics as they were: USB's teacher forward."""
    with torch.no_grad(), train_mode(model), frozen_batchnorm_stats(model):
        return model(x)


def consistency_mse(logits_student: torch.Tensor, logits_teacher: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(logits_student.softmax(-1), logits_teacher.detach().softmax(-1))
