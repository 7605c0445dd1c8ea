"""DTA-SNL (reconstructed): the dynamic class thresholds, selective negative learning, the local-attention head
and its feature-map dropout, on small batches worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench.config import ModelConfig
from bench.engine.model import FERModel, build_model
from bench.errors import FERBenchError
from bench.method import describe_arguments
from bench.registry import create_method, get_method_class
from methods.dtasnl import drop_region

L = math.log


def test_dynamic_thresholds_follow_the_ema_of_class_confidence() -> None:
    dta = create_method("dtasnl", num_classes=3, args={"dta_momentum": 0.5})
    assert dta.thresholds.tolist() == pytest.approx([0.95, 0.95, 0.95])  # mu starts at 0.95
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    loss_u, _, confident, _ = dta.unlabeled_losses(probs, torch.zeros(3, 3))
    # class 0: mean max-prob .8 -> .5*.95 + .5*.8; class 1: .6 -> .775; class 2 absent: unchanged
    assert dta.mu.tolist() == pytest.approx([0.875, 0.775, 0.95])
    assert confident.tolist() == [True, False, False]  # .9 >= .875; .7 < .875; .6 < .775
    assert loss_u.item() == pytest.approx(L(3) / 3, rel=1e-6)  # CE of uniform logits, mean over the batch
    dta.update_thresholds(torch.tensor([[0.2, 0.1, 0.7]]))
    assert dta.mu.tolist() == pytest.approx([0.875, 0.775, 0.825])
    dta.mu = torch.tensor([0.3, 0.8, 0.99])
    assert dta.thresholds.tolist() == pytest.approx([0.5, 0.8, 0.95])  # clipped to [tau_min, tau_max]
    scaled = create_method("dtasnl", num_classes=3, args={"dta_beta": 1.1})
    scaled.mu = torch.tensor([0.5, 0.8, 0.9])
    assert scaled.thresholds.tolist() == pytest.approx([0.55, 0.88, 0.95])


def test_selective_negative_learning_on_low_confidence_samples() -> None:
    dta = create_method("dtasnl", num_classes=4)
    probs = torch.tensor([
        [0.70, 0.26, 0.03, 0.01],  # low confidence, complementary labels {2, 3}
        [0.50, 0.30, 0.15, 0.05],  # low confidence, nothing below .05: not selected
        [0.97, 0.01, 0.01, 0.01],  # confident: learns from its pseudo-label, not here
    ])
    z = torch.tensor([[0.0, 0.0, L(2), 0.0], [1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    confident = torch.tensor([False, False, True])
    loss, selected = dta.negative_loss(z, probs, confident)
    assert selected.tolist() == [True, False, False]
    # student q = softmax(0, 0, ln2, 0) = (1, 1, 2, 1)/5: -(log(1 - 2/5) + log(1 - 1/5)) / 2, over the batch of 3
    ell = -(L(3 / 5) + L(4 / 5)) / 2
    assert loss.item() == pytest.approx(ell / 3, rel=1e-6)
    loss.backward()
    assert z.grad[1:].abs().sum() == 0
    per_selected = create_method("dtasnl", num_classes=4, args={"nl_reduction": "selected"})
    assert per_selected.negative_loss(z, probs, confident)[0].item() == pytest.approx(ell, rel=1e-6)
    # the pseudo-label is never complementary, even below tau_neg: q = (1, 1, 1, 3)/6, N_u = {0, 1, 2}
    low = torch.tensor([[0.04, 0.03, 0.03, 0.9]])
    loss, sel = create_method("dtasnl", num_classes=4, args={"tau_neg": 0.95}).negative_loss(
        torch.tensor([[0.0, 0.0, 0.0, L(3)]]), low, torch.tensor([False]))
    assert sel.tolist() == [True] and loss.item() == pytest.approx(-L(5 / 6), rel=1e-6)


def test_region_dropout_zeroes_one_grid_cell() -> None:
    fmap = torch.ones(64, 1, 5, 4)
    torch.manual_seed(0)
    out = drop_region(fmap, grid=2, prob=1.0)
    zeros = (out == 0).flatten(1).sum(1)
    # a 5 x 4 map's 2 x 2 cells span rows [0, 3) or [2, 5) and columns [0, 2) or [2, 4): 6 zeros each
    assert zeros.tolist() == [6] * 64
    assert drop_region(fmap, 2, prob=0.0).equal(fmap)


def test_head_wraps_any_timm_backbone_and_is_reconstructed_everywhere() -> None:
    cls = get_method_class("dtasnl")
    arguments = describe_arguments(cls.Args)
    assert len(arguments) == 16 and all(a.reconstructed for a in arguments) and cls.requires_ema
    dta = create_method("dtasnl", num_classes=7)
    assert dta.labeled_sampling == "class_balanced"
    torch.manual_seed(0)
    model = dta.build_model(build_model(ModelConfig(backbone="ferbench_cnn_tiny"), 7))
    x = torch.randn(3, 3, 32, 32)
    logits, feats, aux = model.eval()(x, return_features=True)
    assert logits.shape == (3, 7) and feats.shape == (3, 64) and aux.item() == 0.0
    assert model.head.attention is not None and model.head.proj.in_features == 64 * 5  # global + 2x2 local
    resnet = dta.build_model(FERModel(__import__("timm").create_model("resnet10t", num_classes=0), 7))
    assert resnet(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    with pytest.raises(FERBenchError, match="labeled_sampling='random'"):
        create_method("dtasnl", num_classes=7, args={"labeled_sampling": "random"})
    with pytest.raises(FERBenchError, match="tau_min"):
        create_method("dtasnl", num_classes=7, args={"tau_min": 0.9, "tau_max": 0.5})
    assert isinstance(model.base.classifier, nn.Linear)


def test_the_local_attention_head_feeds_the_models_own_head() -> None:
    """Under `model.head=normalized` (the Ada-CM recipe DTA-SNL's paper sweep runs on) the classifier sees the
    L2-normalised pooled feature after dropout, as every other method's; under the harness's linear head, the
    pooled feature after dropout."""
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32)
    for head_type in ("linear", "normalized"):
        base = build_model(ModelConfig(backbone="ferbench_cnn_tiny", head=head_type), 7)
        model = create_method("dtasnl", num_classes=7).build_model(base).eval()
        pooled = model.head(base.feature_map(x))
        logits, feats, _ = model(x, return_features=True)
        seen = nn.functional.normalize(pooled, dim=-1) if head_type == "normalized" else pooled
        assert torch.allclose(logits, base.get_classifier()(seen), atol=1e-6)
        assert torch.allclose(feats, seen, atol=1e-6)
        if head_type == "normalized":
            assert torch.allclose(feats.norm(dim=-1), torch.ones(3), atol=1e-6)
