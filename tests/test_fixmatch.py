"""FixMatch's masked pseudo-label loss on a batch worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import InputLogits

from bench.method import Batch, StepContext
from bench.registry import create_method

L = math.log
# Weak-view logits chosen so the softmax is exact: [0.96, .02, .02], [0.90, .05, .05], [.01, .97, .02]
WEAK = torch.tensor([[L(96), L(2), L(2)], [L(90), L(5), L(5)], [L(1), L(97), L(2)]])
# Strong-view logits: uniform -> CE = ln 3; anything (masked); [.25, .5, .25] -> CE(target 1) = ln 2
STRONG = torch.tensor([[0.0, 0.0, 0.0], [5.0, -3.0, 1.0], [L(1), L(2), L(1)]])


def test_unlabeled_loss_and_mask() -> None:
    fm = create_method("fixmatch", num_classes=3)
    loss_u, mask = fm.unlabeled_loss(WEAK.softmax(-1), STRONG)
    assert mask.tolist() == [1.0, 0.0, 1.0]  # 0.96 and 0.97 pass tau = 0.95; 0.90 does not
    # Averaged over all three unlabeled samples, masked ones count as zero.
    assert loss_u.item() == pytest.approx((L(3) + L(2)) / 3, rel=1e-6)


def test_threshold_is_a_hyperparameter() -> None:
    fm = create_method("fixmatch", num_classes=3, args={"threshold": 0.85})
    _, mask = fm.unlabeled_loss(WEAK.softmax(-1), STRONG)
    assert mask.tolist() == [1.0, 1.0, 1.0]


def test_training_step_total_loss() -> None:
    # An identity "model": the batch tensors are the logits, so every term is known.
    fm = create_method("fixmatch", num_classes=3, args={"lambda_u": 2.0})
    x = torch.tensor([[L(2), L(1), L(1)]])  # probs [.5, .25, .25]; CE(target 0) = ln 2
    batch = Batch(labeled={"weak": x, "y": torch.tensor([0])},
                  unlabeled={"weak": WEAK, "strong": STRONG, "idx": torch.arange(3)})
    out = fm.training_step(InputLogits(), batch, StepContext(step=0, total_steps=1, num_classes=3))
    assert out.loss.item() == pytest.approx(L(2) + 2.0 * (L(3) + L(2)) / 3, rel=1e-6)
    assert float(out.logs["mask_rate"]) == pytest.approx(2 / 3)
    assert float(out.logs["loss_x"]) == pytest.approx(L(2), rel=1e-6)


def test_unknown_argument_is_rejected() -> None:
    from bench.errors import FERBenchError

    with pytest.raises(FERBenchError, match="method 'fixmatch': unknown argument\\(s\\) treshold"):
        create_method("fixmatch", num_classes=3, args={"treshold": 0.9})
