"""Classification metrics for FER as an `evaluate` module: load with evaluate.load(<this file>).

Mean class accuracy is the mean of per-class recalls over classes present in the references
(sklearn's balanced_accuracy_score); macro-F1 averages F1 over the same classes.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Top-1 accuracy, mean class accuracy, macro-F1, per-class recall and the confusion matrix."
_INPUTS = """
Args:
    predictions (list of int): predicted class indices.
    references (list of int): true class indices.
    num_classes (int): size of the label space (rows/columns of the confusion matrix).
Returns:
    accuracy, mean_class_accuracy, macro_f1 (floats in [0, 1]); per_class_recall (list of float or
    None for classes absent from the references); confusion_matrix (rows = true, columns = predicted).
"""


class FERMetrics(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
        )

    def _compute(self, predictions, references, num_classes):
        p = np.asarray(predictions, dtype=np.int64)
        r = np.asarray(references, dtype=np.int64)
        cm = np.zeros((num_classes, num_classes), dtype=np.int64)
        np.add.at(cm, (r, p), 1)
        support = cm.sum(1)
        predicted = cm.sum(0)
        tp = np.diag(cm)
        present = support > 0
        recall = np.where(present, tp / np.maximum(support, 1), np.nan)
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        denom = precision + np.nan_to_num(recall)
        f1 = np.where(denom > 0, 2 * precision * np.nan_to_num(recall) / np.where(denom > 0, denom, 1), 0.0)
        return {
            "accuracy": float(tp.sum() / max(len(r), 1)),
            "mean_class_accuracy": float(np.nanmean(recall[present])) if present.any() else 0.0,
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
            "per_class_recall": [None if np.isnan(x) else float(x) for x in recall],
            "confusion_matrix": cm.tolist(),
        }
