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


# -- segmentation and detection --------------------------------------------------------------


def segmentation_summary(confusion: np.ndarray) -> dict[str, Any]:
    """From a (C, C) pixel confusion matrix (row: the labelled class, column: the
    predicted one; ignored pixels left out): the intersection over union of each class
    (None for a class neither labelled nor predicted anywhere), their mean over the
    classes that have one, and the pixel accuracy."""
    matrix = confusion.astype(np.float64)
    hits, truth, predicted = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    union = truth + predicted - hits
    iou = [float(h / u) if u > 0 else None for h, u in zip(hits, union)]
    present = [v for v in iou if v is not None]
    return {
        "miou": float(np.mean(present)) if present else 0.0,
        "pixel_accuracy": float(hits.sum() / matrix.sum()) if matrix.sum() else 0.0,
        "iou": iou,
        "pixels": [int(t) for t in truth],
    }


def image_iou(truth: np.ndarray, predicted: np.ndarray, ignore: int = 255) -> tuple[float, float]:
    """One image's (mean IoU over the classes labelled or predicted in it, pixel
    accuracy), ignoring the pixels labelled `ignore`. An image with every pixel ignored
    scores 1 (nothing to get wrong)."""
    valid = truth != ignore
    t, p = truth[valid].astype(np.int64), predicted[valid].astype(np.int64)
    if not len(t):
        return 1.0, 1.0
    classes = int(max(t.max(), p.max())) + 1
    matrix = np.bincount(t * classes + p, minlength=classes * classes).reshape(classes, classes)
    summary = segmentation_summary(matrix)
    return summary["miou"], summary["pixel_accuracy"]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) intersection over union of boxes given as [left, top, right, bottom]."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    left = np.maximum(a[:, None, 0], b[None, :, 0])
    top = np.maximum(a[:, None, 1], b[None, :, 1])
    right = np.minimum(a[:, None, 2], b[None, :, 2])
    bottom = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match_detections(
    boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, truth_boxes: np.ndarray, truth_labels: np.ndarray,
    *, iou: float = 0.5, min_score: float = 0.5,
) -> tuple[int, int, int]:
    """One image's (found, false alarms, missed): the detections scoring at least
    `min_score` are matched to the labelled objects of their class greedily, surest first,
    each object at most once, when they overlap it by at least `iou` (COCO's matching at
    one threshold)."""
    keep = scores >= min_score
    boxes, labels, scores = boxes[keep], labels[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    overlaps = box_iou(boxes, truth_boxes)
    taken = np.zeros(len(truth_boxes), dtype=bool)
    found = 0
    for i in order:
        candidates = np.where((truth_labels == labels[i]) & ~taken, overlaps[i], -1.0)
        if len(candidates) and candidates.max() >= iou:
            taken[int(candidates.argmax())] = True
            found += 1
    return found, len(boxes) - found, len(truth_boxes) - found


def detection_score(found: int, false_alarms: int, missed: int) -> float:
    """One image's F1 at the matching above: 1 when every object is found and nothing
    else is; an image with neither objects nor detections scores 1."""
    total = 2 * found + false_alarms + missed
    return 2 * found / total if total else 1.0
