"""The EMA model: timm's ModelEmaV3 (its checkpoints and decay), with the walk over the model's tensors named.

Its first updates (`warmup`): timm's rule copies the student at the first two (decay 0 at steps 0 and 1, the
harness's choice), or the decay holds from the first update (the official codes). Its float buffers (`buffers`):
averaged like the weights, or the student's copied at every update (USB, whose EMA shadows parameters only).
timm walks `state_dict()`, which lists a module registered under several names once per name. Here:
- walk "tensors": each distinct parameter and buffer once (the harness), whatever the module's aliasing;
- walk "state_dict": once per `state_dict()` entry, in order, as the Ada-CM lineage's `WeightEMA`
  (docs/concepts/methods.md#ema-and-customised-weight-decay): float32 entries only, `ema = ema * d + p * (1 - d)`,
  and after each entry's update its "customised weight decay" `p *= 1 - student_decay * lr` on the student. LEAF's
  MoE registers its shared expert 9 times (`expert` plus 8 list entries), so that expert is averaged with an
  effective decay of d**9 and decayed 9 times per step (issue 14, item 8).
With walk "tensors", `student_decay` multiplies each distinct float tensor of the student once.
"""

from __future__ import annotations

import torch
from timm.utils import ModelEmaV3
from torch import nn


class WalkingEma(ModelEmaV3):
    def __init__(self, model: nn.Module, decay: float, device: torch.device | None = None, *,
                 walk: str = "tensors", student_decay: float = 0.0, warmup: str = "copy",
                 buffers: str = "average") -> None:
        super().__init__(model, decay=decay, device=device)
        self.walk = walk
        self.student_decay = student_decay  # Ada-CM's factor: the student is multiplied by 1 - factor * lr
        self.warmup, self.buffers = warmup, buffers
        self._keep = 1.0

    def update(self, model: nn.Module, step: int | None = None, lr: float = 0.0) -> None:
        """timm's update; `lr` (a host float: the schedule is computed on the host) scales the customised decay."""
        self._keep = 1.0 - self.student_decay * lr
        super().update(model, step=step if self.warmup == "copy" else None)  # no step: timm's constant decay

    @torch.no_grad()
    def apply_update_(self, model: nn.Module, decay: float) -> None:
        pairs = list(zip(self.module.state_dict().values(), model.state_dict().values(), strict=True))
        copied = {b.data_ptr() for b in model.buffers()} if self.buffers == "copy" else set()
        if self.walk == "state_dict":
            for ema_v, model_v in pairs:
                if model_v.data_ptr() in copied:
                    ema_v.copy_(model_v)
                elif ema_v.dtype == torch.float32:
                    ema_v.mul_(decay).add_(model_v.to(ema_v.device) * (1.0 - decay))
                    if self._keep != 1.0:
                        model_v.mul_(self._keep)
            return
        seen: set[int] = set()
        ema_f, model_f, student_f = [], [], []
        for ema_v, model_v in pairs:
            if model_v.data_ptr() in seen and model_v.numel():
                continue
            seen.add(model_v.data_ptr())
            if model_v.data_ptr() in copied:
                ema_v.copy_(model_v)
            elif ema_v.is_floating_point():
                ema_f.append(ema_v)
                model_f.append(model_v.to(ema_v.device))
                student_f.append(model_v)  # the student's own tensor, wherever the EMA lives
            else:
                ema_v.copy_(model_v)
        if ema_f:
            self._foreach_lerp_(ema_f, model_f, weight=1.0 - decay)
        if self._keep != 1.0:
            torch._foreach_mul_(student_f, self._keep)
