"""F1: the harmonic mean of precision and recall, per class and then averaged."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "F1 = 2 * precision * recall / (precision + recall), as scikit-learn's f1_score defines it."
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): predicted labels.
    references (`list[int]`): true labels.
    average (`str`, defaults to "binary"): "binary" (the class `pos_label`), "macro" (unweighted mean over
        classes), "weighted" (mean weighted by each class's support) or "micro" (global counts).
    pos_label (`int`, defaults to 1): the positive class for `average="binary"`.
Returns:
    f1 (`float`). A class with no predicted and no true sample scores 0, as in scikit-learn.
Example:
    >>> evaluate.load("path/to/f1").compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'f1': 0.6666666666666666}
"""


def _f1(true_positive, predicted, actual):
    denominator = predicted + actual
    return np.where(denominator > 0, 2.0 * true_positive / np.maximum(denominator, 1), 0.0)


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, average="binary", pos_label=1):
        predictions, references = np.asarray(predictions), np.asarray(references)
        if average == "binary":
            labels = np.array([pos_label])
        elif average in ("macro", "weighted", "micro"):
            labels = np.unique(np.concatenate([predictions, references]))
        else:
            raise ValueError(f"average={average!r} is not supported: use 'binary', 'macro', 'weighted' or 'micro'.")
        true_positive = np.array([np.sum((predictions == c) & (references == c)) for c in labels], dtype=np.float64)
        predicted = np.array([np.sum(predictions == c) for c in labels], dtype=np.float64)
        actual = np.array([np.sum(references == c) for c in labels], dtype=np.float64)
        if average == "micro":
            score = _f1(true_positive.sum(), predicted.sum(), actual.sum())
        else:
            per_class = _f1(true_positive, predicted, actual)
            score = np.average(per_class, weights=actual if average == "weighted" and actual.sum() else None)
        return {"f1": float(score)}
