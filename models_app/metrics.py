"""Classification metrics from an evaluation's predictions: pure NumPy, unit-tested.

`probabilities` is (N, C) (each row sums to 1), `labels` is (N,) with the given class of
each image. Everything here is what the evaluation page and API show.
"""
from __future__ import annotations

from typing import Any

import numpy as np

CALIBRATION_BINS = 15


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """(C, C): row = the given class, column = the predicted one."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def per_class(matrix: np.ndarray) -> dict[str, list[float | None]]:
    """Precision, recall and F1 per class (None where undefined: nothing predicted as, or
    no image of, that class), and the support (images of each class)."""
    tp = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    precision = [float(t / p) if p else None for t, p in zip(tp, predicted)]
    recall = [float(t / s) if s else None for t, s in zip(tp, support)]
    f1 = [
        (2 * p * r / (p + r) if p + r else 0.0) if p is not None and r is not None else None
        for p, r in zip(precision, recall)
    ]
    return {"precision": precision, "recall": recall, "f1": f1, "support": [int(s) for s in support]}


def top_k_accuracy(probabilities: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, probabilities.shape[1])
    top = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean()) if len(labels) else 0.0


def calibration(probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Expected calibration error over `bins` equal-width confidence bins, and the
    reliability diagram's points (per bin: mean confidence, accuracy, count)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds confidences in (edges[i], edges[i+1]]; a confidence of exactly 0 goes to bin 0.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    rows = []
    ece = 0.0
    for i in range(bins):
        mask = which == i
        count = int(mask.sum())
        if count:
            mean_confidence = float(confidence[mask].mean())
            accuracy = float(correct[mask].mean())
            ece += count / len(labels) * abs(accuracy - mean_confidence)
        else:
            mean_confidence = accuracy = None  # type: ignore[assignment]
        rows.append({"low": float(edges[i]), "high": float(edges[i + 1]), "confidence": mean_confidence,
                     "accuracy": accuracy, "count": count})
    return {"ece": float(ece), "bins": rows}


def suspect_labels(probabilities: np.ndarray, labels: np.ndarray, limit: int = 200) -> list[dict[str, Any]]:
    """Images whose given label the model confidently disagrees with, most suspect first.

    Confident learning (Northcutt et al.; cleanlab's `find_label_issues` with the
    confident joint): class j's threshold t_j is the mean probability of j over the images
    labelled j. An image is suspect when some other class j reaches t_j and is the most
    likely of the classes that do; it is ranked by p_j - p_given (the self-confidence
    margin)."""
    if not len(labels):
        return []
    classes = probabilities.shape[1]
    thresholds = np.array([
        probabilities[labels == j, j].mean() if (labels == j).any() else 1.0 for j in range(classes)
    ])
    above = probabilities >= thresholds[None, :]
    masked = np.where(above, probabilities, -1.0)
    confident = masked.argmax(axis=1)
    has = above.any(axis=1)
    suspect = np.nonzero(has & (confident != labels))[0]
    given = probabilities[suspect, labels[suspect]]
    other = probabilities[suspect, confident[suspect]]
    order = np.argsort(-(other - given), kind="stable")[:limit]
    return [
        {"position": int(suspect[i]), "label": int(labels[suspect[i]]), "suggested": int(confident[suspect[i]]),
         "given_probability": float(given[i]), "suggested_probability": float(other[i])}
        for i in order
    ]


def summarise(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Everything the evaluation stores about a run, from its predictions."""
    classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predicted, classes)
    return {
        "images": int(len(labels)),
        "top1": float((predicted == labels).mean()) if len(labels) else 0.0,
        "top5": top_k_accuracy(probabilities, labels, 5),
        "confusion": matrix.tolist(),
        "per_class": per_class(matrix),
        "calibration": calibration(probabilities, labels),
        "suspects": suspect_labels(probabilities, labels),
    }
