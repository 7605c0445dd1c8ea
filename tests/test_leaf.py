"""LEAF: positive/negative set selection, its weights, the top-k loss, the rescaled batch-masked L_u, and the
MoE adapters, on small batches worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import IdentityBackbone
from torch import nn

from bench.engine.model import FERModel
from bench.errors import FERBenchError
from bench.registry import create_method
from methods.leaf import NoisyTopKMoE, ResExpert, cpl_sets, topk_loss

L = math.log

# Probabilities over 5 classes and what the code's topk_ce_FPL(temp_k=3, threshold=0.9) makes of them.
Q = torch.tensor([
    [0.85, 0.10, 0.03, 0.01, 0.01],  # top-2 mass .95 >= .9: P = {0}
    [0.15, 0.50, 0.30, 0.03, 0.02],  # top-2 .80, top-3 .95: P = {1, 2}
    [0.10, 0.20, 0.15, 0.25, 0.30],  # top-3 .75 < .9: P = top-3 = {4, 3, 1}
], dtype=torch.float64)


def _concave(mass: float, n: int, next_p: float) -> float:
    mean = mass / n
    return L(1 + 50 * (mean - next_p)) / L(1 + 50 * mean)


def test_positive_sets_and_concave_weight() -> None:
    positive, w = cpl_sets(Q, topk=3, threshold=0.9, weight="concave")
    assert positive.tolist() == [[True, False, False, False, False],
                                 [False, True, True, False, False],
                                 [False, True, False, True, True]]
    # S_i / (i + 1) against the first excluded probability q_(i+1)
    expected = [_concave(0.95, 2, 0.10), _concave(0.95, 3, 0.15), _concave(0.90, 4, 0.15)]
    assert w.tolist() == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx([0.9297, 0.7911, 0.6219], abs=1e-4)  # an ambiguous row weighs less


def test_linear_and_convex_weights() -> None:
    _, lin = cpl_sets(Q[:1], weight="linear")
    _, cvx = cpl_sets(Q[:1], weight="convex")
    assert lin.item() == pytest.approx((0.475 - 0.10) / 0.475)
    assert cvx.item() == pytest.approx((0.475 - 0.10) / (0.10 + 0.475))
    with pytest.raises(FERBenchError, match="cpl_weight='square'"):
        create_method("leaf", num_classes=5, args={"cpl_weight": "square"})


def test_topk_loss_is_softplus_of_positive_and_negative_logsumexps() -> None:
    positive = torch.tensor([[True, False, False, False, False], [False, True, True, False, False]])
    z = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 2.0, 1.0, 0.0, -1.0]], dtype=torch.float64)
    e = math.exp
    expected = [L(1 + e(-1) * 4), L(1 + (e(-2) + e(-1)) * (1 + 1 + e(-1)))]
    assert topk_loss(z, positive).tolist() == pytest.approx(expected, rel=1e-12)


def _category_setup():
    avg_logits = Q.log().float()
    z = torch.tensor([[2.0, 0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.5, 1.0]],
                     requires_grad=True)
    pseudo = torch.tensor([0, 1, 4])
    confident = torch.tensor([True, False, False])
    positive, w = cpl_sets(Q.float(), 3, 0.9, "concave")
    ell_w = topk_loss(z.detach(), positive) * w
    ce = nn.functional.cross_entropy(z.detach(), pseudo).item()
    return avg_logits, z, pseudo, confident, ell_w, ce, positive, w


def test_category_loss_is_rescaled_to_the_hard_label_ce_and_masked_per_batch() -> None:
    leaf = create_method("leaf", num_classes=5)
    avg_logits, z, pseudo, confident, ell_w, ce, positive, w = _category_setup()
    loss = leaf.category_loss(z, avg_logits, pseudo, confident)
    # the value is the hard-label CE times the confident fraction (1 of 3) ...
    assert loss.item() == pytest.approx(ce / 3, rel=1e-6)
    loss.backward()
    # ... the gradient is the weighted top-k loss's, times that constant: every sample learns, confident or not
    zz = z.detach().clone().requires_grad_(True)
    (topk_loss(zz, positive) * w).mean().backward()
    scale = ce / ell_w.mean().item()
    assert torch.allclose(z.grad, scale / 3 * zz.grad, rtol=1e-5)
    assert all(row.abs().sum() > 0 for row in z.grad)


def test_category_loss_per_sample_mask_and_no_rescale() -> None:
    avg_logits, z, pseudo, confident, ell_w, ce, _, _ = _category_setup()
    per_sample = create_method("leaf", num_classes=5, args={"mask_per_sample": True})
    loss = per_sample.category_loss(z, avg_logits, pseudo, confident)
    scale = ce / ell_w.mean().item()
    assert loss.item() == pytest.approx(scale * ell_w[0].item() / 3, rel=1e-6)
    loss.backward()
    assert z.grad[0].abs().sum() > 0 and z.grad[1:].abs().sum() == 0  # only the confident sample learns
    raw = create_method("leaf", num_classes=5, args={"rescale_to_ce": False})
    assert raw.category_loss(z, avg_logits, pseudo, confident).item() == pytest.approx(ell_w.mean().item() / 3,
                                                                                         rel=1e-6)


def test_code_moe_is_one_shared_residual_adapter() -> None:
    leaf = create_method("leaf", num_classes=3)
    model = leaf.build_model(FERModel(IdentityBackbone(4), 3))
    moe = model.semantic_moe
    assert len(moe.experts) == 8 and moe.k == 1  # 8 experts sharing one module, top-1
    assert all(e is moe.expert for e in moe.experts) and len({id(p) for p in moe.parameters()}) == 6
    h = torch.randn(5, 4)
    out, aux = moe(h)
    assert torch.equal(out, moe.experts[0](h)) and aux.item() == 0.0  # gate 1, no load-balancing term
    # forward: logits = W instance_moe(normalize(semantic_moe(x))), feature = normalize(semantic_moe(x))
    model.eval()
    logits, feature, _ = model(h, return_features=True)
    expected_feature = nn.functional.normalize(moe.experts[0](h), dim=-1)
    assert torch.allclose(feature, expected_feature)
    assert torch.allclose(logits, model.base.get_classifier()(model.instance_moe.experts[0](expected_feature)))


def test_paper_moe_top2_gates_and_load_balancing_loss() -> None:
    moe = NoisyTopKMoE(dim=2, num_experts=4, k=2, shared=False, noisy=True, loss_coef=0.01).eval()
    with torch.no_grad():  # clean logits h @ W_g; no noise in eval mode
        moe.w_gate.copy_(torch.tensor([[3.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]]))
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # row 0 logits (3, 1, 0, 2): top-2 = experts 0, 3
    gates, load = moe.gating(h)
    s = 1 / (1 + math.exp(-1))  # softmax(3, 2)[0]
    assert gates[0].tolist() == pytest.approx([s, 0, 0, 1 - s])
    # row 1: all logits 0; ties keep two experts with gate 1/2 each
    assert gates[1].sum().item() == pytest.approx(1.0) and (gates[1] > 0).sum().item() == 2
    out, aux = moe(h)
    importance, counts = gates.sum(0), load
    cv2 = lambda v: v.var().item() / v.mean().item() ** 2  # noqa: E731
    assert aux.item() == pytest.approx(0.01 * (cv2(importance) + cv2(counts)), rel=1e-5)
    expert_out = torch.stack([e(h) for e in moe.experts], dim=1)
    assert torch.allclose(out, (gates[:, :, None] * expert_out).sum(1))
    # in training the load is smooth (probability of staying in the top k) and the noise is drawn
    torch.manual_seed(0)
    leaf = create_method("leaf", num_classes=3, args={"paper_moe": True})
    model = leaf.build_model(FERModel(IdentityBackbone(4), 3)).train()
    assert len(model.semantic_moe.experts) == 8 and model.semantic_moe.k == 2
    _, _, aux = model(torch.randn(6, 4), return_features=True)
    assert aux.item() > 0 and aux.requires_grad
    assert isinstance(model.instance_moe.experts[0], ResExpert)


def test_training_step_weights_and_thresholds() -> None:
    from bench.method import Batch, StepContext

    torch.manual_seed(0)
    leaf = create_method("leaf", num_classes=3, args={"initial_threshold": 0.0})  # every sample confident
    model = leaf.build_model(FERModel(IdentityBackbone(4), 3)).train()
    u = {k: torch.randn(4, 4) for k in ("weak", "weak2", "strong")}
    batch = Batch({"weak": torch.randn(2, 4), "y": torch.tensor([0, 2])}, {**u, "idx": torch.arange(4)})
    out = leaf.training_step(model, batch, StepContext(0, 10, 3))
    lg = {k: float(v) for k, v in out.logs.items()}  # logged tensors, read here as the loop does at log steps
    assert lg["mask_rate"] == 1.0 and lg["loss_s"] == 0.0  # no low-confidence sample for the contrast term
    assert out.loss.item() == pytest.approx(0.5 * lg["loss_x"] + lg["loss_u"] + 0.1 * lg["loss_s"], rel=1e-6)
