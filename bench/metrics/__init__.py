"""FERBench's own `evaluate` metric modules, loaded by local path (hub metrics cannot load offline)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

FER_METRICS_PATH = Path(__file__).with_name("fer_metrics.py")


@lru_cache(maxsize=1)
def _metric() -> Any:
    import evaluate

    return evaluate.load(str(FER_METRICS_PATH))


def compute_metrics(predictions: np.ndarray, references: np.ndarray, num_classes: int) -> dict[str, Any]:
    """accuracy, mean_class_accuracy, macro_f1, per_class_recall, confusion_matrix (via `evaluate`)."""
    return _metric().compute(
        predictions=np.asarray(predictions).tolist(),
        references=np.asarray(references).tolist(),
        num_classes=num_classes,
    )
