from __future__ import annotations

import pytest

from bench.metrics import compute_metrics


def test_metrics_by_hand() -> None:
    refs = [0, 1, 2, 2, 2, 0]
    preds = [0, 1, 1, 2, 2, 2]
    m = compute_metrics(preds, refs, 4)
    # confusion (rows true): class0 -> {0:1, 2:1}; class1 -> {1:1}; class2 -> {1:1, 2:2}
    assert m["confusion_matrix"] == [[1, 0, 1, 0], [0, 1, 0, 0], [0, 1, 2, 0], [0, 0, 0, 0]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    # recalls 1/2, 1/1, 2/3; class 3 absent from the references is left out of the means
    assert m["per_class_recall"] == [pytest.approx(0.5), 1.0, pytest.approx(2 / 3), None]
    assert m["mean_class_accuracy"] == pytest.approx((0.5 + 1 + 2 / 3) / 3)
    # precisions 1/1, 1/2, 2/3 -> F1 = 2/3, 2/3, 2/3
    assert m["macro_f1"] == pytest.approx(2 / 3)
