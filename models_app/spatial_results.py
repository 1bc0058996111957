"""What the pages and the API read from a segmentation or detection evaluation
(models_app/evaluate_spatial.py wrote it): its images worst first with their scores, one
image with the predicted masks or boxes drawn (or the ground truth, to compare), and a CSV
of every image's score."""
from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np

from datasets.imaging import encode
from datasets.selectors import dataset_label_view, dataset_pixels, draw_boxes, overlay_labels
from datasets.source_paths import read_paths
from workers.errors import JobError, NotFound
from workers.permissions import AnyUser, can_view

from .evaluations import predictions_file
from .models import Evaluation

SHOWS = ("prediction", "truth")


def is_spatial(evaluation: Evaluation) -> bool:
    return evaluation.model.dataset.task != "classification"


def check_dataset_visible(user: AnyUser, evaluation: Evaluation) -> None:
    """Its images are the dataset's: seen only by who may see the dataset too (seeing the
    model is not enough when the dataset is private)."""
    if not can_view(user, evaluation.model.dataset_id):
        raise NotFound("This evaluation's images are those of a dataset you may not see.")


def _load(evaluation: Evaluation) -> dict[str, np.ndarray]:
    with np.load(predictions_file(evaluation)) as data:
        return {name: data[name] for name in data.files}


def spatial_images(evaluation: Evaluation, *, view: str = "worst", page: int = 1, per_page: int = 48) -> dict[str, Any]:
    """A page of the evaluated images: "worst" (the lowest scores first: mean IoU per image,
    or F1 of the boxes) or "all" (in the split's order). A segmentation evaluation keeps
    the predicted masks of its worst images only; the others show their ground truth."""
    if view not in ("worst", "all"):
        raise JobError("view must be worst or all.", field="view")
    data = _load(evaluation)
    scores = data["scores"]
    positions = np.argsort(scores, kind="stable") if view == "worst" else np.arange(len(scores))
    per_page = max(1, min(per_page, 200))
    pages = max(1, -(-len(positions) // per_page))
    page = max(1, min(page, pages))
    chosen = positions[(page - 1) * per_page : page * per_page].tolist()
    with_masks = set(data["mask_positions"].tolist()) if "mask_positions" in data else None
    paths = read_paths(evaluation.model.dataset.directory, evaluation.split, chosen)
    rows = []
    for position, path in zip(chosen, paths):
        row: dict[str, Any] = {"index": position, "path": path, "score": float(scores[position])}
        if "pixel_accuracy" in data:
            row["pixel_accuracy"] = float(data["pixel_accuracy"][position])
            row["has_prediction"] = with_masks is not None and position in with_masks
        else:
            found, false_alarms, missed = (int(v) for v in data["tallies"][position])
            row.update(found=found, false_alarms=false_alarms, missed=missed, has_prediction=True)
        rows.append(row)
    return {"view": view, "page": page, "pages": pages, "per_page": per_page, "total": int(len(positions)), "images": rows}


def spatial_image(evaluation: Evaluation, index: int, show: str) -> bytes:
    """Image `index` of the split as PNG: with the network's masks blended over it, or its
    boxes surer than the evaluation's threshold with their classes and scores
    ("prediction"); or with its ground truth drawn the same way ("truth")."""
    if show not in SHOWS:
        raise JobError(f"Show one of {', '.join(SHOWS)}.", field="show")
    dataset, split = evaluation.model.dataset, evaluation.split
    if show == "truth":
        return dataset_label_view(dataset, split, index, "overlay" if dataset.is_segmentation else "boxes")
    data = _load(evaluation)
    if not 0 <= index < len(data["scores"]):
        raise NotFound(f"The {split} split has no image {index}.")
    pixels = dataset_pixels(dataset, split, index)
    if dataset.is_segmentation:
        where = np.nonzero(data["mask_positions"] == index)[0]
        if not len(where):
            raise NotFound(f"Only the predicted masks of the {len(data['mask_positions'])} worst images are kept.")
        mask = data["masks"][int(where[0])]
        crop = evaluation.model.crop_size
        if crop:  # the network saw the centre of the image
            top, left = (pixels.shape[0] - crop) // 2, (pixels.shape[1] - crop) // 2
            pixels = pixels[top : top + crop, left : left + crop]
        return encode(overlay_labels(pixels, mask, dataset.label_colours), "png")
    threshold = float(evaluation.metrics.get("shown_score", 0.5))
    start, end = int(data["offsets"][index]), int(data["offsets"][index + 1])
    labels = dataset.labels
    objects = [
        {"index": int(c), "box": [float(v) for v in box], "label": f"{labels[int(c)] if 0 <= c < len(labels) else c} {s:.0%}"}
        for box, c, s in zip(data["boxes"][start:end], data["labels"][start:end], data["box_scores"][start:end])
        if s >= threshold
    ]
    return draw_boxes(pixels, objects, scale=max(1, 256 // max(pixels.shape[:2])))


def spatial_csv(evaluation: Evaluation) -> str:
    """One row per image: its index, its file, its score; and its pixel accuracy, or how
    many objects were found, missed and invented; and (detection) its detections surer
    than the threshold as `class score left top right bottom` separated by `;`."""
    data = _load(evaluation)
    count = len(data["scores"])
    names = read_paths(evaluation.model.dataset.directory, evaluation.split, list(range(count)))
    labels = evaluation.labels
    out = io.StringIO()
    writer = csv.writer(out)
    segmentation = "pixel_accuracy" in data
    writer.writerow(["index", "image", "mean_iou" if segmentation else "f1",
                     *(["pixel_accuracy"] if segmentation else ["found", "missed", "false_alarms", "detections"])])
    threshold = float(evaluation.metrics.get("shown_score", 0.5))
    for i in range(count):
        row: list[Any] = [i, names[i] or "", f"{data['scores'][i]:.6f}"]
        if segmentation:
            row.append(f"{data['pixel_accuracy'][i]:.6f}")
        else:
            found, false_alarms, missed = (int(v) for v in data["tallies"][i])
            start, end = int(data["offsets"][i]), int(data["offsets"][i + 1])
            detections = "; ".join(
                f"{labels[int(c)] if 0 <= c < len(labels) else c} {s:.4f} " + " ".join(f"{v:.1f}" for v in box)
                for box, c, s in zip(data["boxes"][start:end], data["labels"][start:end], data["box_scores"][start:end])
                if s >= threshold
            )
            row += [found, missed, false_alarms, detections]
        writer.writerow(row)
    return out.getvalue()
