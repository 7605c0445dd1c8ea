"""LEAF (Zhang et al., CVIU 2025; arXiv 2404.15041): hierarchical expression-aware aggregation, as in
zfkarl/LEAF `Code_LEAF/main.py` and `models/backbone.py` (docs/concepts/methods.md#leaf). Built on Ada-CM
(docs/concepts/methods.md#ada-cm).

Model (`build_model` wraps any timm backbone):
    feature = L2norm(semantic_moe(dropout(backbone(x))));  logits = W instance_moe(feature)
Each MoE is Shazeer's noisily gated top-k mixture of residual MLP experts E(h) = h + W2 relu(W1 h), hidden
width dim/2, gates g = softmax over the top-k of h W_g + eps * (softplus(h W_noise) + 0.01) (noise in
training only; W_g = W_noise = 0 at init), output sum_e g_e E_e(h).

Training step (views weak, weak2, strong of each unlabeled image; weak of each labeled one):
- L_x = CE(f(weak x), y).
- Ada-CM partition: p~ = (softmax f(weak1 u) + softmax f(weak2 u)) / 2, y^ = argmax p~; confident iff
  max p~ >= T_{y^}, with T the Ada-CM class thresholds (init 0.8, recomputed every `epoch_iters` from the
  EMA model on the labeled set: max(0.8, 0.97 sigmoid(epoch) mean max-prob of correct predictions)).
- Consistency of the two weak views: L_s = NT-Xent (tau 0.07) over the features of the low-confidence
  samples' two weak views (Ada-CM's contrastive term).
- Category level (`topk_ce_FPL`, temp_k = 3, threshold 0.9, concave weight): q = softmax of the
  *averaged weak logits*, sorted q_(1) >= q_(2) >= ...; S_i = q_(1) + ... + q_(i+1). The positive set P is
  the top-i classes for the smallest i in {1, ..., k-1} with S_i >= 0.9, else the top-k; N = the other
  classes. Weight w = min(1, log(1 + 50 (S_i/(i+1) - q_(i+1))) / log(1 + 50 S_i/(i+1))) ("linear":
  (S/(i+1) - q)/(S/(i+1)); "convex": (S/(i+1) - q)/(q + S/(i+1))). On strong logits z:
  l = softplus(logsumexp_{c in P}(-z_c) + logsumexp_{c in N}(z_c)).
  L_u = mean_b(l_b w_b), rescaled by the constant CE(z, y^).mean() / L_u (its value becomes the hard-label
  CE's), then multiplied by the fraction of confident samples: the mask is NOT applied per sample.
- L = 0.5 L_x + L_u + 0.1 L_s.

Defaults are the official code's, including what changes the method there:
- all experts of an MoE share one module (`ModuleList([expert] * 8)`) and k = 1, so the gate is always 1
  and each MoE is one residual adapter; the gating weights exist but get no gradient. The code combines
  experts as log(sum_e g_e exp(E_e(h))), which equals sum_e g_e E_e(h) for k = 1 (used here);
- the load-balancing loss is computed but never added to the loss (not computed here);
- the confidence mask scales the batch loss instead of selecting samples.
Options: `paper_moe` = 8 independent experts, top-2 gating (a linear combination of the two) and the
load-balancing loss cv^2(importance) + cv^2(load), weighted `moe_loss_coef` (the code's 1e-2) per MoE;
`mask_per_sample` = L_u = scale * mean_b(mask_b l_b w_b), with the same rescaling constant.
`epoch_iters` defaults to the code's 1600 iterations per epoch.
The rest of the official step (Dropout(0.5) before the MoE, separate forwards, views, Adam, the lineage's EMA over
state_dict entries with the shared expert 9 times, the customised weight decay) is the `leaf` recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import FERBenchError
from bench.method import (
    Batch,
    Count,
    ModelOutput,
    NonNegative,
    Probability,
    StepContext,
    StepOutput,
    arg,
    forward_parts,
)
from bench.registry import register_method
from methods.adacm import AdaCM, AdaCMArgs

CONCAVE_SCALE = 50.0  # the constant of the code's concave weight


class ResExpert(nn.Module):
    """E(h) = h + W2 relu(W1 h), hidden width dim // 2 (LEAF's `ResExpert`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(dim, dim // 2), nn.ReLU(), nn.Linear(dim // 2, dim))

    def forward(self, h: Tensor) -> Tensor:
        return h + self.fc(h)


def cv_squared(x: Tensor) -> Tensor:
    """Squared coefficient of variation (unbiased variance / mean^2), 0 for one element (Shazeer et al.)."""
    if x.numel() == 1:
        return x.new_zeros(())
    x = x.float()
    return x.var() / (x.mean() ** 2 + 1e-10)


class NoisyTopKMoE(nn.Module):
    """Sparsely gated mixture of residual experts (Shazeer et al. 2017), computed densely: experts whose
    gate is 0 contribute exactly 0, so the result equals the sparse dispatch.

    `shared=True` is LEAF's released code: one expert module standing for all `num_experts`, registered as the
    code registers it (`expert`, and `num_experts` times in `experts`), so `state_dict()` lists it
    num_experts + 1 times: the harness's EMA averages it once (`train.ema_walk=tensors`), the lineage's
    WeightEMA once per entry (`ema_walk=state_dict`, the `leaf` recipe).
    """

    def __init__(self, dim: int, num_experts: int = 8, k: int = 1, shared: bool = True, noisy: bool = True,
                 loss_coef: float = 0.0) -> None:
        super().__init__()
        if not 1 <= k <= num_experts:
            raise FERBenchError(f"MoE: top-k={k} must lie in [1, num_experts={num_experts}]")
        self.num_experts, self.k, self.shared, self.noisy, self.loss_coef = num_experts, k, shared, noisy, loss_coef
        if shared:
            self.expert = ResExpert(dim)
            self.experts = nn.ModuleList([self.expert] * num_experts)
        else:
            self.experts = nn.ModuleList([ResExpert(dim) for _ in range(num_experts)])
        self.w_gate = nn.Parameter(torch.zeros(dim, num_experts))
        self.w_noise = nn.Parameter(torch.zeros(dim, num_experts))

    def gating(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """(gates (B, E), load (E,)): noisy top-k softmax gates and the (smooth, when noisy) expert load."""
        clean = h @ self.w_gate
        noisy_now = self.noisy and self.training
        if noisy_now:
            noise_std = F.softplus(h @ self.w_noise) + 0.01
            logits = clean + torch.randn_like(clean) * noise_std
        else:
            logits = clean
        top_logits, top_idx = logits.topk(min(self.k + 1, self.num_experts), dim=1)
        gates = torch.zeros_like(logits).scatter(1, top_idx[:, : self.k], top_logits[:, : self.k].softmax(dim=1))
        if noisy_now and self.k < self.num_experts:
            # P(expert e stays in the top k under fresh noise): differentiable load (Shazeer's _prob_in_top_k)
            normal = torch.distributions.Normal(0.0, 1.0, validate_args=False)  # validation would read on the host
            thr_in = top_logits[:, self.k : self.k + 1]  # the (k+1)-th value: what e must beat if it is in
            thr_out = top_logits[:, self.k - 1 : self.k]  # the k-th value: what e must beat if it is out
            is_in = logits > thr_in
            prob = torch.where(is_in, normal.cdf((clean - thr_in) / noise_std),
                               normal.cdf((clean - thr_out) / noise_std))
            load = prob.sum(0)
        else:
            load = (gates > 0).sum(0).float()
        return gates, load

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """(output, load-balancing loss); the loss is 0 unless `loss_coef` > 0."""
        gates, load = self.gating(h)
        if self.shared:
            out = gates.sum(1, keepdim=True) * self.experts[0](h)
        else:
            out = torch.einsum("be,bed->bd", gates, torch.stack([e(h) for e in self.experts], dim=1))
        aux = self.loss_coef * (cv_squared(gates.sum(0)) + cv_squared(load)) if self.loss_coef > 0 \
            else h.new_zeros(())
        return out, aux


class LEAFModel(nn.Module):
    """FERModel with LEAF's semantic and instance MoE adapters between the model's head input (the pooled
    features after its dropout) and its classifier."""

    def __init__(self, base: nn.Module, semantic_moe: NoisyTopKMoE, instance_moe: NoisyTopKMoE) -> None:
        super().__init__()
        self.base = base
        self.num_features = base.num_features
        self.semantic_moe = semantic_moe
        self.instance_moe = instance_moe

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | ModelOutput:
        h, aux_semantic = self.semantic_moe(self.base.forward_head(self.base.forward_features(x), pre_logits=True))
        feature = F.normalize(h, dim=-1)
        z, aux_instance = self.instance_moe(feature)
        logits = self.base.get_classifier()(z)
        return ModelOutput(logits, feature, aux_semantic + aux_instance) if return_features else logits


def cpl_sets(q: Tensor, topk: int = 3, threshold: float = 0.9, weight: str = "concave") -> tuple[Tensor, Tensor]:
    """LEAF's positive/negative decoupling of probabilities q (B, C): (positive mask (B, C) bool, weight (B,)).

    P = the top-i classes for the smallest i in 1..topk-1 whose top-(i+1) mass reaches `threshold`,
    else the top-`topk`; the weight compares the mean of the top-(i+1) probabilities with the (i+1)-th.
    """
    n, c = q.shape
    kk = min(topk + 1, c)
    prob, cls = q.topk(kk, dim=1)
    cum = prob.cumsum(dim=1)
    n_pos = torch.full((n,), kk - 1, dtype=torch.long, device=q.device)
    for i in range(kk - 2, 0, -1):  # downwards, so the smallest qualifying i is written last
        n_pos = torch.where(cum[:, i] >= threshold, torch.full_like(n_pos, i), n_pos)
    mean_top = cum.gather(1, n_pos[:, None]).squeeze(1) / (n_pos + 1).to(q.dtype)
    first_out = prob.gather(1, n_pos[:, None]).squeeze(1)
    if weight == "concave":
        w = torch.log1p(CONCAVE_SCALE * (mean_top - first_out)) / torch.log1p(CONCAVE_SCALE * mean_top)
    elif weight == "linear":
        w = (mean_top - first_out) / mean_top
    elif weight == "convex":
        w = (mean_top - first_out) / (first_out + mean_top)
    else:
        raise FERBenchError(f"LEAF weight {weight!r}: expected concave, linear or convex")
    ranks_in = torch.arange(kk, device=q.device)[None, :] < n_pos[:, None]
    positive = torch.zeros(n, c, dtype=torch.bool, device=q.device).scatter(1, cls, ranks_in)
    return positive, w.clamp(max=1.0)


def topk_loss(logits: Tensor, positive: Tensor) -> Tensor:
    """Per-sample log(1 + sum_{p in P} e^{-z_p} * sum_{n in N} e^{z_n})."""
    neg_inf = torch.finfo(logits.dtype).min
    lse_pos = torch.logsumexp((-logits).masked_fill(~positive, neg_inf), dim=1)
    lse_neg = torch.logsumexp(logits.masked_fill(positive, neg_inf), dim=1)
    return F.softplus(lse_pos + lse_neg)


@dataclass
class LEAFArgs(AdaCMArgs):
    epoch_iters: Count = arg(1600, "iterations between threshold updates: one epoch of LEAF's code")
    topk: Count = arg(3, "temp_k of topk_ce_FPL: at most k positive classes")
    cpl_threshold: Probability = arg(0.9, "topk_ce_FPL threshold on the top-(i+1) probability mass")
    cpl_weight: Literal["concave", "linear", "convex"] = arg("concave", "the code's weight of the decoupled loss")
    rescale_to_ce: bool = arg(True, "L_u rescaled to the hard-label CE's value (the code)")
    mask_per_sample: bool = arg(False, "false: the code's batch-level mask; true: per-sample masking")
    paper_moe: bool = arg(False, "false: the code's shared top-1 expert; true: 8 experts, top-2, balancing loss")
    num_experts: Count = arg(8, "experts per MoE")
    moe_loss_coef: NonNegative = arg(0.01, "paper_moe's load-balancing weight (the code's 1e-2)")
    noisy_gating: bool = arg(True, "Shazeer's noisy gates in training")


@register_method("leaf")
class LEAF(AdaCM):
    views = ("weak", "weak2", "strong")
    Args = LEAFArgs
    reference = ("Zhang et al. CVIU 2025; zfkarl/LEAF Code_LEAF (shared-expert top-1 MoE adapters, CPL top-3 @0.9 "
                 "concave, batch-level mask, 0.5/1/0.1, Ada-CM thresholds, 1600 it/epoch)")
    # Ada-CM thresholds (at 4, 8, 12) low enough for the masks to open at tiny settings, and the MoE adapters
    check_settings = {"method_args.epoch_iters": 4, "method_args.initial_threshold": 0.3}

    def __init__(self, num_classes: int, **arguments: Any) -> None:
        super().__init__(num_classes, **arguments)
        if num_classes < 2:
            raise FERBenchError(f"method 'leaf': needs at least 2 classes, got {num_classes}")
        if self.args.num_experts < (2 if self.args.paper_moe else 1):
            raise FERBenchError(f"method 'leaf': num_experts={self.args.num_experts} is too small")

    def build_model(self, model: nn.Module) -> nn.Module:
        a, dim = self.args, int(model.num_features)

        def moe() -> NoisyTopKMoE:
            return NoisyTopKMoE(dim, a.num_experts, k=2 if a.paper_moe else 1, shared=not a.paper_moe,
                                noisy=a.noisy_gating, loss_coef=a.moe_loss_coef if a.paper_moe else 0.0)

        return LEAFModel(model, moe(), moe())

    def category_loss(self, logits_s: Tensor, logits_avg: Tensor, pseudo: Tensor, confident: Tensor) -> Tensor:
        """L_u: the top-k positive/negative loss, weighted, rescaled to the hard-label CE, masked."""
        a = self.args
        q = logits_avg.detach().float().softmax(dim=-1)
        positive, w = cpl_sets(q, a.topk, a.cpl_threshold, a.cpl_weight)
        weighted = topk_loss(logits_s.float(), positive) * w
        loss = weighted.mean()
        scale: Tensor | float = 1.0
        if a.rescale_to_ce:  # a constant: only the value changes, as in the code
            # ce / loss in float64, then float32, as the code's Python-float ratio times a float32 tensor gives, and
            # without reading either value on the host; 1 where the loss is 0
            ce = F.cross_entropy(logits_s.float(), pseudo).mean().detach()
            ratio = (ce.double() / loss.detach().double()).float()
            scale = torch.where(loss.detach() > 0, ratio, torch.ones_like(ratio))
        mask = confident.float()
        if a.mask_per_sample:
            return scale * (weighted * mask).mean()
        return scale * loss * mask.mean()

    def training_step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        x, y = batch.labeled["weak"], batch.labeled["y"]
        u = batch.unlabeled
        parts = forward_parts(model, x, u["weak"], u["weak2"], u["strong"])
        (logits_x, _, _), (l1, f1, _), (l2, f2, _), (ls, _, _) = parts
        aux = sum(p.aux for p in parts)  # the MoE balancing loss of each forward (`paper_moe`)
        loss_x = F.cross_entropy(logits_x, y)
        pseudo, confident = self.partition(l1, l2)
        loss_s = self.contrastive(f1, f2, confident)
        loss_u = self.category_loss(ls, (l1 + l2) / 2, pseudo, confident)
        a = self.args
        loss = a.lambda_x * loss_x + a.lambda_u * loss_u + a.lambda_s * loss_s + aux
        logs = {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "loss_s": loss_s.detach(),
                "mask_rate": confident.float().mean().detach(), "threshold_mean": self.thresholds.mean().detach()}
        if a.paper_moe:
            logs["loss_moe"] = torch.as_tensor(aux).detach()
        return StepOutput(loss, logs)

