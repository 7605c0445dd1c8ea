"""DTA-SNL (Cai et al., arXiv 2601.05556): dynamic threshold adjustment and selective negative learning.

No code is public and only the abstract could be read, so the recipe is RECONSTRUCTED from it as
described in docs/concepts/methods.md#dta-snl. Every reconstructed choice is a named argument (all of them, marked
reconstructed in `DTASNLArgs` and by `ferbench methods dtasnl`), to be corrected once the paper's values are known.

From the abstract [ABS/3P]: a feature extractor with local attention enhancement and random dropout of
feature maps; an EMA teacher ("NetworkB") and a student ("NetworkA"); dynamic thresholds for pseudo-label
selection; negative learning on low-confidence unlabeled samples with complementary labels; weak
augmentation and balanced sampling for labeled data.

Reconstructed (argument names in brackets):
- Head (`build_model`, any timm backbone's last feature map F, C channels):
  [local_attention] F <- F * sigmoid(conv1x1(F)) (a spatial attention gate);
  [feature_dropout, region_drop_prob] in training only, with probability 0.5 per sample zero one random
  cell of the 2x2 grid of F ("region"), or Dropout2d with p = [channel_drop_p] 0.1 ("channel"), or "none";
  [local_grid] g = 2: feature = Linear([GAP(F), the g x g cells' average pools]) -> classifier width.
- [labeled_sampling] "class_balanced": each labeled draw picks a class uniformly, then one of its images
  (WeightedRandomSampler with weights 1/n_c, with replacement).
- Teacher: the run's EMA model (the engine's `train.ema_decay`; 0.999 in the reference) gives
  p = softmax(teacher(weak u)) ([pseudo_label_source] "teacher"; "student" uses the student's detached
  weak-view probabilities instead); y^ = argmax p.
- DTA: per class c, mu_c <- m mu_c + (1 - m) * mean of max p over the batch's samples with y^ = c (classes
  absent from the batch keep mu_c), [dta_momentum] m = 0.999, [dta_init] mu_c = 0.95 at start;
  tau_c = clip([dta_beta] 1.0 * mu_c, [tau_min] 0.5, [tau_max] 0.95). The batch updates mu before its mask.
  Confident: max p >= tau_{y^}.  L_u = mean_b 1[confident] CE(student(strong u), y^)  (FixMatch-style).
- SNL on the other samples: complementary labels N_u = {c != y^ : p_c < [tau_neg] 0.05}; a sample is kept
  only if N_u is not empty; l = -(1/|N_u|) sum_{c in N_u} log(1 - q_c), q = softmax(student(strong u));
  L_nl = sum over kept samples / B ([nl_reduction] "batch"; "selected" divides by the kept count).
- L = L_x + [lambda_u] 1.0 L_u + [lambda_n] 1.0 L_nl, with L_x = CE(student(weak x), y).
The optimiser and schedule (Adam 5e-4, 20 x 800 iterations in the reconstruction) are run settings
(`preset=adacm`), not method arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import FERBenchError
from bench.method import (
    Batch,
    Decay,
    Method,
    MethodArgs,
    ModelOutput,
    NonNegative,
    NonNegativeInt,
    Probability,
    StepContext,
    StepOutput,
    arg,
    cross_entropy_masked_mean,
    joint_forward,
    this_process_only,
)
from bench.registry import register_method


def drop_region(fmap: Tensor, grid: int, prob: float) -> Tensor:
    """Zero one random cell of a grid x grid partition of each map, for each sample with probability `prob`.

    Cells follow adaptive pooling's bounds [floor(i H / g), ceil((i + 1) H / g)), so they cover the map.
    """
    n, _, height, width = fmap.shape
    dev = fmap.device
    apply = torch.rand(n, device=dev) < prob
    cell = torch.randint(grid * grid, (n,), device=dev)
    row, col = cell // grid, cell % grid

    def inside(i: Tensor, size: int) -> Tensor:
        lo, hi = (i * size) // grid, ((i + 1) * size + grid - 1) // grid
        pos = torch.arange(size, device=dev)[None, :]
        return (pos >= lo[:, None]) & (pos < hi[:, None])

    dropped = inside(row, height)[:, :, None] & inside(col, width)[:, None, :] & apply[:, None, None]
    return fmap * (~dropped)[:, None].to(fmap.dtype)


class LocalAttentionHead(nn.Module):
    """Spatial attention gate + random feature-map dropout + global and g x g local pooling, projected."""

    def __init__(self, channels: int, out_dim: int, *, local_attention: bool = True, local_grid: int = 2,
                 feature_dropout: str = "region", region_drop_prob: float = 0.5, channel_drop_p: float = 0.1) -> None:
        super().__init__()
        self.attention = nn.Conv2d(channels, 1, kernel_size=1) if local_attention else None
        self.local_grid = local_grid
        self.feature_dropout, self.region_drop_prob = feature_dropout, region_drop_prob
        self.channel_drop = nn.Dropout2d(channel_drop_p) if feature_dropout == "channel" else None
        width = channels * (1 + local_grid * local_grid)
        self.proj = nn.Linear(width, out_dim) if (local_grid > 0 or channels != out_dim) else None

    def forward(self, fmap: Tensor) -> Tensor:
        if self.attention is not None:
            fmap = fmap * torch.sigmoid(self.attention(fmap))
        if self.training and self.feature_dropout == "region":
            fmap = drop_region(fmap, max(self.local_grid, 2), self.region_drop_prob)
        elif self.channel_drop is not None:
            fmap = self.channel_drop(fmap)
        pooled = [fmap.mean(dim=(2, 3))]
        if self.local_grid > 0:
            pooled.append(F.adaptive_avg_pool2d(fmap, self.local_grid).flatten(1))
        feats = torch.cat(pooled, dim=1)
        return self.proj(feats) if self.proj is not None else feats


class DTASNLModel(nn.Module):
    """FERModel whose global pooling is replaced by the local-attention head; the model's head follows as it would
    the pooling (`FERModel.classify`: dropout, the L2 normalisation with `model.head=normalized`, the classifier)."""

    def __init__(self, base: nn.Module, head: LocalAttentionHead) -> None:
        super().__init__()
        self.base = base
        self.num_features = base.num_features
        self.head = head

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | ModelOutput:
        out = self.base.classify(self.head(self.base.feature_map(x)))
        return out if return_features else out.logits


def _reconstructed(default: Any, note: str, per_step_decay: bool = False) -> Any:
    return arg(default, note, reconstructed=True, per_step_decay=per_step_decay)


@dataclass
class DTASNLArgs(MethodArgs):
    pseudo_label_source: Literal["teacher", "student"] = _reconstructed("teacher", "EMA teacher's weak-view probs")
    dta_init: Probability = _reconstructed(0.95, "mu_c at the start")
    dta_momentum: Decay = _reconstructed(0.999, "EMA momentum m of mu_c", per_step_decay=True)
    dta_beta: NonNegative = _reconstructed(1.0, "tau_c = clip(beta mu_c, tau_min, tau_max)")
    tau_min: Probability = _reconstructed(0.5, "lower clip of the class thresholds")
    tau_max: Probability = _reconstructed(0.95, "upper clip of the class thresholds")
    tau_neg: Probability = _reconstructed(0.05, "complementary labels: classes with p_c below it")
    nl_reduction: Literal["batch", "selected"] = _reconstructed("batch", "L_nl divided by B, or by the kept count")
    lambda_u: NonNegative = _reconstructed(1.0, "weight of L_u")
    lambda_n: NonNegative = _reconstructed(1.0, "weight of L_nl")
    labeled_sampling: Literal["class_balanced", "uniform"] = _reconstructed("class_balanced", "balanced sampling")
    local_attention: bool = _reconstructed(True, "F <- F * sigmoid(conv1x1(F))")
    local_grid: NonNegativeInt = _reconstructed(2, "g x g local average pools beside the global one")
    feature_dropout: Literal["region", "channel", "none"] = _reconstructed("region", "random feature-map dropout")
    region_drop_prob: Probability = _reconstructed(0.5, "per-sample probability of dropping one grid cell")
    channel_drop_p: Decay = _reconstructed(0.1, "Dropout2d probability of feature_dropout=channel")


@register_method("dtasnl")
class DTASNL(Method):
    views = ("weak", "strong")
    requires_ema = True
    Args = DTASNLArgs
    reference = ("Cai et al. arXiv 2601.05556 (abstract only, no code): recipe RECONSTRUCTED (docs/concepts/methods.md"
                 "#dta-snl) - EMA teacher, class thresholds clip(EMA conf, .5, .95), negative learning p<.05, "
                 "2x2 local attention + region dropout, class-balanced labeled batches")
    check_settings = {"method_args.tau_min": 0.2, "method_args.tau_max": 0.3}  # class confidences that move

    def __init__(self, num_classes: int, **arguments: Any) -> None:
        super().__init__(num_classes, **arguments)
        a = self.args
        self.labeled_sampling = a.labeled_sampling
        if a.tau_min > a.tau_max:
            raise FERBenchError(f"method 'dtasnl': expected tau_min ({a.tau_min}) <= tau_max ({a.tau_max})")
        self.add_state("mu", torch.full((num_classes,), float(a.dta_init)))

    def build_model(self, model: nn.Module) -> nn.Module:
        a = self.args
        head = LocalAttentionHead(model.feature_map_channels(), int(model.num_features),
                                  local_attention=a.local_attention, local_grid=a.local_grid,
                                  feature_dropout=a.feature_dropout, region_drop_prob=a.region_drop_prob,
                                  channel_drop_p=a.channel_drop_p)
        return DTASNLModel(model, head)

    @property
    def thresholds(self) -> Tensor:
        a = self.args
        return (a.dta_beta * self.mu).clamp(a.tau_min, a.tau_max)

    @torch.no_grad()
    def update_thresholds(self, probs: Tensor) -> None:
        """DTA: EMA of the mean max-probability of the samples predicted as each class in this batch."""
        max_p, pseudo = probs.max(dim=-1)
        counts = torch.bincount(pseudo, minlength=self.num_classes).to(max_p.dtype)
        sums = torch.zeros(self.num_classes, dtype=max_p.dtype, device=max_p.device).index_add_(0, pseudo, max_p)
        present = counts > 0
        m = float(self.args.dta_momentum)
        batch_mean = sums / counts.clamp(min=1)
        self.mu = torch.where(present, m * self.mu + (1 - m) * batch_mean, self.mu)

    def negative_loss(self, logits_s: Tensor, probs: Tensor, confident: Tensor) -> tuple[Tensor, Tensor]:
        """(L_nl, selected mask): negative learning with complementary labels on the low-confidence samples."""
        pseudo = probs.argmax(dim=-1)
        complementary = probs < self.args.tau_neg
        complementary[torch.arange(len(probs), device=probs.device), pseudo] = False
        selected = ~confident & complementary.any(dim=1)
        z = logits_s.float()
        # log(1 - q_c) = logsumexp_{j != c} z_j - logsumexp_j z_j, stable where q_c is close to 1
        eye = torch.eye(z.shape[1], dtype=torch.bool, device=z.device)
        others = z[:, None, :].masked_fill(eye[None], torch.finfo(z.dtype).min)
        log_not = torch.logsumexp(others, dim=2) - torch.logsumexp(z, dim=1, keepdim=True)
        comp = complementary.float()
        per_sample = -(log_not * comp).sum(1) / comp.sum(1).clamp(min=1)
        per_sample = per_sample * selected.float()
        if self.args.nl_reduction == "selected":
            return per_sample.sum() / selected.sum().clamp(min=1), selected
        return per_sample.mean(), selected

    def unlabeled_losses(self, probs: Tensor, logits_s: Tensor, gather: Callable[[Tensor], Tensor] = this_process_only
                         ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(L_u, L_nl, confident mask, selected-for-negative-learning mask) from weak-view probabilities; the
        thresholds move with every process's batch (`gather`)."""
        self.update_thresholds(gather(probs))
        max_p, pseudo = probs.max(dim=-1)
        confident = max_p >= self.thresholds[pseudo]
        loss_u = cross_entropy_masked_mean(logits_s.float(), pseudo, confident.float())
        loss_nl, selected = self.negative_loss(logits_s, probs, confident)
        return loss_u, loss_nl, confident, selected

    def training_step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        x, y = batch.labeled["weak"], batch.labeled["y"]
        u_weak, u_strong = batch.unlabeled["weak"], batch.unlabeled["strong"]
        if self.args.pseudo_label_source == "teacher":
            logits_x, logits_s = joint_forward(model, x, u_strong)
            with torch.no_grad():
                probs = ctx.ema_model(u_weak).float().softmax(dim=-1)
        else:
            logits_x, logits_w, logits_s = joint_forward(model, x, u_weak, u_strong)
            probs = logits_w.detach().float().softmax(dim=-1)
        loss_x = F.cross_entropy(logits_x, y)
        loss_u, loss_nl, confident, selected = self.unlabeled_losses(probs, logits_s, ctx.gather)
        loss = loss_x + self.args.lambda_u * loss_u + self.args.lambda_n * loss_nl
        return StepOutput(loss, {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "loss_nl": loss_nl.detach(),
                                 "mask_rate": confident.float().mean().detach(),
                                 "nl_rate": selected.float().mean().detach(),
                                 "threshold_mean": self.thresholds.mean().detach()})
