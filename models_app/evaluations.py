"""Evaluations: a snapshot run over a dataset split as a job of its own (the kind is in
models_app/kind.py, its child is models_app/evaluate.py), stored with its metrics so its
page reloads at once; and the reads the page needs from its predictions (the images it
gets wrong, a confusion-matrix cell, the top-N per class, the CSV)."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import QuerySet

from datasets.source_paths import read_paths
from workers.errors import JobError
from workers.models import JobStatus
from workers.services import job_create, job_enqueue

from .evaluate import PREDICTIONS, EvalSpec
from .models import EVALUATION_KIND, Evaluation, Network, TrainedModel
from .services import input_size, snapshot_for

EVALUATION_BATCH = 64


def evaluation_list() -> QuerySet[Evaluation]:
    return Evaluation.objects.select_related("job", "job__owner", "model", "model__job", "model__dataset")


@transaction.atomic
def evaluation_create(*, owner: User, model: TrainedModel, epoch: float | None, split: str) -> Evaluation:
    """Queue an evaluation of the snapshot of `epoch` (None: the latest) on `split`."""
    snapshot = snapshot_for(model, epoch, field="epoch")
    dataset = model.dataset
    if split not in dataset.splits:
        have = ", ".join(dataset.splits) or "none"
        raise JobError(f"Dataset {dataset.job.name!r} has no {split} split (it has: {have}).", field="split")
    if not dataset.counts.get(split):
        raise JobError(f"The {split} split of {dataset.job.name!r} has no images.", field="split")
    name = f"{model.job.name} · epoch {snapshot.epoch:g} · {split}"
    job = job_create(kind=EVALUATION_KIND, name=name, owner=owner, group=model.job.group)
    evaluation = Evaluation.objects.create(job=job, model=model, epoch=snapshot.epoch, split=split)
    job_enqueue(job.pk, from_=[JobStatus.INITIALIZED])
    return evaluation


def evaluation_spec(evaluation: Evaluation) -> EvalSpec:
    model, dataset = evaluation.model, evaluation.model.dataset
    snapshot = snapshot_for(model, evaluation.epoch)
    return EvalSpec(
        output_dir=str(evaluation.directory),
        weights=str(snapshot.path),
        network=model.network,
        custom_code=model.custom_code if model.network == Network.CUSTOM else "",
        input_shape=input_size(dataset, model.crop_size),
        num_classes=dataset.num_classes,
        db=str(dataset.split_path(evaluation.split)),
        mean=str(dataset.mean_path),
        crop_size=model.crop_size or 0,
        mean_subtraction=model.mean_subtraction,
        batch_size=EVALUATION_BATCH,
    )


def evaluation_store_result(evaluation_id: int, result: dict[str, Any]) -> None:
    Evaluation.objects.filter(pk=evaluation_id).update(metrics=result)


def evaluation_remove_partial(evaluation_id: int) -> None:
    evaluation = Evaluation.objects.filter(pk=evaluation_id).select_related("job").first()
    if evaluation is not None:
        (evaluation.directory / PREDICTIONS).unlink(missing_ok=True)
        Evaluation.objects.filter(pk=evaluation_id).update(metrics={})


# -- reads -----------------------------------------------------------------------------------


@dataclass
class Predictions:
    probabilities: np.ndarray  # (N, C) float16
    labels: np.ndarray  # (N,)

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)


def evaluation_predictions(evaluation: Evaluation) -> Predictions:
    path = evaluation.directory / PREDICTIONS
    if evaluation.job.status != JobStatus.DONE or not path.exists():
        raise JobError("This evaluation has no results yet.")
    with np.load(path) as data:
        return Predictions(data["probabilities"].astype(np.float32), data["labels"])


def _rows(evaluation: Evaluation, positions: np.ndarray, p: Predictions, score_class: int | None = None) -> list[dict[str, Any]]:
    labels = evaluation.labels
    out = []
    paths = read_paths(evaluation.model.dataset.directory, evaluation.split, positions.tolist())
    for position, path in zip(positions.tolist(), paths):
        predicted = int(p.predicted[position])
        label = int(p.labels[position])
        out.append({
            "index": position,  # the record's index in the split: the dataset's image URL takes it
            "path": path,  # the file in the dataset's source
            "label": label, "label_name": labels[label] if label < len(labels) else str(label),
            "predicted": predicted, "predicted_name": labels[predicted] if predicted < len(labels) else str(predicted),
            "confidence": float(p.probabilities[position, predicted]),
            "score": float(p.probabilities[position, score_class]) if score_class is not None else None,
        })
    return out


def evaluation_images(
    evaluation: Evaluation, *, view: str, label: int | None = None, predicted: int | None = None, page: int = 1, per_page: int = 48
) -> dict[str, Any]:
    """A page of images from the predictions.

    view="mistakes": misclassified images, most confident first (optionally of the given
    class `label`, or predicted as `predicted`); "cell": the images of one confusion-matrix
    cell (`label` given, `predicted` predicted), most confident first; "top": the images
    scoring highest for class `label` (DIGITS' top-N per category), whatever their label."""
    p = evaluation_predictions(evaluation)
    classes = p.probabilities.shape[1]
    for name, value in (("label", label), ("predicted", predicted)):
        if value is not None and not 0 <= value < classes:
            raise JobError(f"{name} must be a class index from 0 to {classes - 1}.", field=name)
    confidence = p.probabilities[np.arange(len(p.labels)), p.predicted]
    score_class = None
    if view == "top":
        if label is None:
            raise JobError("Give the class (label) whose top images to show.", field="label")
        score_class = label
        positions = np.argsort(-p.probabilities[:, label], kind="stable")
    elif view in ("mistakes", "cell"):
        mask = p.predicted != p.labels if view == "mistakes" else np.ones(len(p.labels), dtype=bool)
        if view == "cell" and (label is None or predicted is None):
            raise JobError("A confusion-matrix cell needs both label and predicted.", field="label")
        if label is not None:
            mask &= p.labels == label
        if predicted is not None:
            mask &= p.predicted == predicted
        candidates = np.nonzero(mask)[0]
        positions = candidates[np.argsort(-confidence[candidates], kind="stable")]
    else:
        raise JobError("view must be mistakes, cell or top.", field="view")
    per_page = max(1, min(per_page, 200))
    pages = max(1, -(-len(positions) // per_page))
    page = max(1, min(page, pages))
    chosen = positions[(page - 1) * per_page : page * per_page]
    return {
        "view": view, "label": label, "predicted": predicted, "page": page, "pages": pages, "per_page": per_page,
        "total": int(len(positions)), "images": _rows(evaluation, chosen, p, score_class),
    }


def evaluation_csv(evaluation: Evaluation) -> str:
    """One row per image: its index in the split, given label, top-5 with probabilities."""
    p = evaluation_predictions(evaluation)
    labels = evaluation.labels
    k = min(5, p.probabilities.shape[1])
    top = np.argsort(-p.probabilities, axis=1, kind="stable")[:, :k]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["index", "label", "correct", *[f"{kind}{i + 1}" for i in range(k) for kind in ("prediction", "probability")]])
    for position in range(len(p.labels)):
        row: list[Any] = [position, labels[int(p.labels[position])], int(top[position, 0] == p.labels[position])]
        for j in top[position]:
            row += [labels[int(j)], f"{p.probabilities[position, j]:.6f}"]
        writer.writerow(row)
    return out.getvalue()


def evaluation_compare(a: Evaluation, b: Evaluation) -> dict[str, Any]:
    """Two evaluations side by side (two snapshots, or two models on the same classes):
    their summaries, the per-class deltas (b - a) and the confusion-matrix difference."""
    for evaluation in (a, b):
        if not evaluation.metrics:
            raise JobError(f"Evaluation #{evaluation.pk} has no results yet.", field="a" if evaluation is a else "b")
    if a.labels != b.labels:
        raise JobError("These evaluations are on different classes; compare evaluations of models trained on the same labels.", field="b")
    ma, mb = a.metrics, b.metrics
    if ma["images"] != mb["images"] or a.split != b.split or a.model.dataset_id != b.model.dataset_id:
        note = "They are on different images: compare the rates, not the counts."
    else:
        note = ""

    def delta(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else y - x

    per_a, per_b = ma["per_class"], mb["per_class"]
    classes = [
        {
            "label": label,
            **{f"{name}_a": per_a[name][i] for name in ("precision", "recall", "f1")},
            **{f"{name}_b": per_b[name][i] for name in ("precision", "recall", "f1")},
            **{f"{name}_delta": delta(per_a[name][i], per_b[name][i]) for name in ("precision", "recall", "f1")},
            "support_a": per_a["support"][i], "support_b": per_b["support"][i],
        }
        for i, label in enumerate(a.labels)
    ]
    confusion = (np.asarray(mb["confusion"]) - np.asarray(ma["confusion"])).tolist()
    return {
        "a": a.pk, "b": b.pk, "note": note, "labels": a.labels,
        "top1": {"a": ma["top1"], "b": mb["top1"], "delta": mb["top1"] - ma["top1"]},
        "top5": {"a": ma["top5"], "b": mb["top5"], "delta": mb["top5"] - ma["top5"]},
        "ece": {"a": ma["calibration"]["ece"], "b": mb["calibration"]["ece"],
                "delta": mb["calibration"]["ece"] - ma["calibration"]["ece"]},
        "classes": classes,
        "confusion_delta": confusion,
    }
