"""Whole-pass classification scores: accuracy, macro F1, expected calibration error, confusion matrix."""

from __future__ import annotations

from torch import Tensor

ECE_BINS = 15


def classification_scores(logits: Tensor, labels: Tensor, temperature: float) -> dict[str, float]:
    """`acc`, macro `f1`, `ece` of the probabilities at `temperature` and `ece_raw` of the uncalibrated ones."""
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_calibration_error,
        multiclass_f1_score,
    )

    classes = logits.size(-1)
    probs, raw = (logits / temperature).softmax(-1), logits.softmax(-1)
    return {
        "acc": float(multiclass_accuracy(probs, labels, classes, average="micro")),
        "f1": float(multiclass_f1_score(probs, labels, classes, average="macro")),
        "ece": float(multiclass_calibration_error(probs, labels, classes, n_bins=ECE_BINS)),
        "ece_raw": float(multiclass_calibration_error(raw, labels, classes, n_bins=ECE_BINS)),
        "temperature": float(temperature),
    }


def confusion(logits: Tensor, labels: Tensor) -> Tensor:
    """Counts (C, C): rows true labels, columns predicted labels."""
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    return multiclass_confusion_matrix(logits.argmax(-1), labels, logits.size(-1))
