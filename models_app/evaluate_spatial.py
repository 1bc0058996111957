"""Evaluate a segmentation or a detection snapshot on a split of its dataset: the part of
the evaluation child (models_app/evaluate.py) for the tasks whose answers are where
things are, not just what the image is.

Both store, next to the metrics of the whole split (models_app/metrics.py), a score per
image so that the page can show the worst images first:

- segmentation: the confusion matrix of the pixels, mean IoU, per-class IoU and pixel
  accuracy; per image its own mean IoU and pixel accuracy, and the predicted masks of the
  `KEEP_MASKS` worst images (every mask would take the split's size again);
- detection: mAP@0.5 and mAP@0.5:0.95, overall and per class (COCO's evaluation through
  torchmetrics, as during training); per image every detection (box, class, score) and
  how many objects it found, missed and invented at IoU 0.5 with a score of at least
  `SHOWN_SCORE`, its F1 over these being its score.
"""
from __future__ import annotations

import heapq
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .metrics import detection_score, image_iou, match_detections, segmentation_summary

if TYPE_CHECKING:
    from .evaluate import EvalSpec, Progress

KEEP_MASKS = 240  # the worst images' predicted masks kept for the page
SHOWN_SCORE = 0.5  # detections at least this sure are drawn and counted per image
MAX_DETECTIONS = 100  # per image, surest first (torchvision's detectors' own default)


def _network(spec: EvalSpec) -> tuple[Any, Any]:
    import torch

    from .networks import build_network
    from .training.augment import BatchTransform, TransformSpec

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads()))
    net = build_network(spec.network, spec.custom_code, tuple(spec.input_shape), spec.num_classes)  # type: ignore[arg-type]
    state = torch.load(spec.weights, map_location="cpu", weights_only=True)
    net.load_state_dict(state.get("model", state))
    net.eval()
    transform = BatchTransform(
        TransformSpec(crop_size=spec.crop_size or None, mean_subtraction=spec.mean_subtraction),
        np.load(spec.mean) if spec.mean else None,
        torch.device("cpu"),
    )
    return net, transform


def _save(out_dir: Path, name: str, arrays: dict[str, np.ndarray]) -> None:
    tmp = out_dir / (name + ".tmp")
    with tmp.open("wb") as fh:
        np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, out_dir / name)


def evaluate_segmentation(spec: EvalSpec, progress_for: type[Progress], out_dir: Path, predictions: str) -> dict[str, Any]:
    import torch

    from .training.augment import IGNORE_INDEX
    from .training.data import Split, chunk

    net, transform = _network(spec)
    images_split = Split(spec.db, cache_bytes=256 << 20, workers=0)
    labels_split = Split(spec.labels_db, cache_bytes=256 << 20, workers=0)
    count = len(images_split)
    if not count:
        raise ValueError("This split has no images.")
    classes = spec.num_classes
    confusion = np.zeros((classes, classes), dtype=np.int64)
    scores = np.empty(count, dtype=np.float32)
    accuracy = np.empty(count, dtype=np.float32)
    worst: list[tuple[float, int, np.ndarray]] = []  # a heap of the KEEP_MASKS lowest scores (negated)
    progress = progress_for(count)
    batches = chunk(torch.arange(count), spec.batch_size)
    with torch.no_grad():
        for indices, (images, _), (label_images, _) in zip(batches, images_split.batches(batches), labels_split.batches(batches)):
            truth = transform.eval_labels(label_images[:, 0]).numpy()
            predicted = net(transform.eval(images)).float().argmax(1).numpy().astype(np.uint8)
            valid = truth != IGNORE_INDEX
            confusion += np.bincount(
                truth[valid].astype(np.int64) * classes + predicted[valid], minlength=classes * classes
            ).reshape(classes, classes)
            for position, t, p in zip(indices.tolist(), truth, predicted):
                scores[position], accuracy[position] = image_iou(t, p, IGNORE_INDEX)
                heapq.heappush(worst, (-float(scores[position]), position, p))
                if len(worst) > KEEP_MASKS:
                    heapq.heappop(worst)  # the best of those kept goes
            progress.advance(len(indices))
    kept = sorted(worst, key=lambda w: (-w[0], w[1]))  # the worst first
    _save(out_dir, predictions, {
        "scores": scores, "pixel_accuracy": accuracy,
        "mask_positions": np.array([w[1] for w in kept], dtype=np.int64),
        "masks": np.stack([w[2] for w in kept]) if kept else np.zeros((0, 1, 1), dtype=np.uint8),
    })
    summary = segmentation_summary(confusion)
    return {
        "task": "segmentation", "images": count, **summary, "confusion": confusion.tolist(),
        "masks_kept": len(kept), "images_below_half": int((scores < 0.5).sum()),
    }


def evaluate_detection(spec: EvalSpec, progress_for: type[Progress], out_dir: Path, predictions: str) -> dict[str, Any]:
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    from .training.data import Objects, Split, chunk

    net, transform = _network(spec)
    split = Split(spec.db, cache_bytes=256 << 20, workers=0)
    objects = Objects(spec.objects)
    count = len(split)
    if not count:
        raise ValueError("This split has no images.")
    coco = MeanAveragePrecision(iou_type="bbox", class_metrics=True)
    at_half = MeanAveragePrecision(iou_type="bbox", iou_thresholds=[0.5], class_metrics=True)
    boxes: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    box_scores: list[np.ndarray] = []
    tallies = np.zeros((count, 3), dtype=np.int64)  # found, false alarms, missed
    progress = progress_for(count)
    batches = chunk(torch.arange(count), spec.batch_size)
    with torch.no_grad():
        for indices, (images, _) in zip(batches, split.batches(batches)):
            truth = [{"boxes": b, "labels": c} for b, c in objects.batch(indices)]
            # Label 0 is the background (a custom detector may still return it): not an object.
            found = [{k: (v.float() if k != "labels" else v)[d["labels"] > 0] for k, v in d.items()}
                     for d in net(list(transform.eval(images)))]
            coco.update(found, truth)
            at_half.update(found, truth)
            for position, d, t in zip(indices.tolist(), found, truth):
                order = torch.argsort(d["scores"], descending=True)[:MAX_DETECTIONS]
                b, c, s = d["boxes"][order].numpy(), d["labels"][order].numpy() - 1, d["scores"][order].numpy()
                boxes.append(b.astype(np.float32))
                labels.append(c.astype(np.int64))
                box_scores.append(s.astype(np.float32))
                tallies[position] = match_detections(
                    b, c, s, t["boxes"].numpy(), t["labels"].numpy() - 1, iou=0.5, min_score=SHOWN_SCORE
                )
            progress.advance(len(indices))
    offsets = np.zeros(count + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in boxes])
    scores = np.array([detection_score(*row) for row in tallies], dtype=np.float32)
    _save(out_dir, predictions, {
        "scores": scores, "tallies": tallies, "offsets": offsets,
        "boxes": np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32),
        "labels": np.concatenate(labels) if labels else np.zeros(0, np.int64),
        "box_scores": np.concatenate(box_scores) if box_scores else np.zeros(0, np.float32),
    })
    overall, half = coco.compute(), at_half.compute()

    def per_class(result: dict[str, Any]) -> list[float | None]:
        values: list[float | None] = [None] * spec.num_classes
        for label, value in zip(result["classes"].reshape(-1).tolist(), result["map_per_class"].reshape(-1).tolist()):
            if 1 <= int(label) <= spec.num_classes and value >= 0:  # -1: a class with no object in the split
                values[int(label) - 1] = float(value)
        return values

    def finite(value: float) -> float:
        return value if np.isfinite(value) and value >= 0 else 0.0

    in_split = np.bincount(np.concatenate([t[1].numpy() - 1 for t in objects.items]) if len(objects.items) else
                           np.zeros(0, np.int64), minlength=spec.num_classes)
    found_total, false_total, missed_total = (int(v) for v in tallies.sum(axis=0))
    return {
        "task": "detection", "images": count,
        "map50": finite(float(overall["map_50"])), "map": finite(float(overall["map"])),
        "ap50": per_class(half), "ap": per_class(overall), "objects": [int(v) for v in in_split[: spec.num_classes]],
        "shown_score": SHOWN_SCORE, "found": found_total, "false_alarms": false_total, "missed": missed_total,
        "images_below_half": int((scores < 0.5).sum()),
    }
