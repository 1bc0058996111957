"""Evaluations: a snapshot run over a dataset split as a job of its own (the kind is in
models_app/kind.py, its child is models_app/evaluate.py), stored with its metrics so its
page reloads at once; and the reads the page needs from its predictions (the images it
gets wrong, a confusion-matrix cell, the top-N per class, the CSV)."""
from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import QuerySet

from datasets.models import Upload
from datasets.services import resolve_data_file, resolve_data_folder
from datasets.source_paths import read_paths
from datasets.sources import ARCHIVE_SUFFIXES, is_under
from datasets.imaging import load_image, resize_image
from workers import storage
from workers.errors import JobError, NotFound
from workers.models import JobStatus
from workers.services import job_create, job_delete, job_enqueue

from .evaluate import PREDICTIONS, EvalSpec
from .image_inputs import NO_LABEL
from .models import EVALUATION_KIND, Evaluation, EvaluationSource, Network, TrainedModel
from .services import input_size, snapshot_for

EVALUATION_BATCH = 64


def evaluation_list() -> QuerySet[Evaluation]:
    return Evaluation.objects.select_related("job", "job__owner", "model", "model__job", "model__dataset")


def evaluation_create(
    *,
    owner: User,
    model: TrainedModel,
    epoch: float | None,
    split: str | None = None,
    image_list: str | None = None,
    list_path: str = "",
    image_folder: str = "",
    files: Sequence[UploadedFile] = (),
    upload: Upload | None = None,
) -> Evaluation:
    """Queue a run of the snapshot of `epoch` (None: the latest) over many images: a
    `split` of its dataset; or (classify many) a text list of `path [label]` lines, given
    as text (`image_list`) or as a server file (`list_path`), relative paths under
    `image_folder`; or uploaded `files` (images and archives) and a finished resumable
    `upload` (an archive). Exactly one kind of source."""
    snapshot = snapshot_for(model, epoch, field="epoch")
    if model.dataset.task != "classification" and not split:
        raise JobError(
            f"A {model.dataset.task} model is evaluated on a split of its dataset, whose "
            f"{'label images' if model.dataset.is_segmentation else 'boxes'} are the ground truth; to see its output on "
            "images of your own, use Classify one image.", field="split",
        )
    chosen = [name for name, given in (("split", split), ("image_list", image_list is not None or list_path),
                                        ("images", files or upload)) if given]
    if len(chosen) != 1:
        raise JobError("Choose one source: a split of the dataset, an image list, or uploaded images.", field="split")
    if split:
        return _create(owner, model, snapshot.epoch, EvaluationSource.SPLIT, split=_check_split(model, split))
    if chosen == ["image_list"]:
        folder = str(resolve_data_folder(image_folder, field="image_folder")) if image_folder else ""
        if list_path:
            path = resolve_data_file(list_path, "list_path")
            if path.stat().st_size > settings.MAX_UPLOAD_LIST_BYTES:
                raise JobError(f"The list is larger than {settings.MAX_UPLOAD_LIST_BYTES >> 20} MiB.", field="list_path")
            text = path.read_text(encoding="utf-8", errors="replace")
            name = path.name
        else:
            text, name = image_list or "", "list"
        if len(text.encode()) > settings.MAX_UPLOAD_LIST_BYTES:
            raise JobError(f"The list is larger than {settings.MAX_UPLOAD_LIST_BYTES >> 20} MiB.", field="image_list")
        lines = sum(1 for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
        if not lines:
            raise JobError("The image list is empty: give one `path [label]` line per image.", field="image_list")
        description = f"{name} ({lines} line{'s' if lines != 1 else ''}{', under ' + folder if folder else ''})"
        return _create(owner, model, snapshot.epoch, EvaluationSource.LIST, description=description,
                       write=lambda d: (d / LIST_FILE).write_text(text, encoding="utf-8"), image_folder=folder)
    total = sum(f.size or 0 for f in files) + (upload.size if upload else 0)
    if total > settings.MAX_UPLOAD_ARCHIVE_BYTES:
        raise JobError(f"The files add up to {total >> 20} MiB; the limit is {settings.MAX_UPLOAD_ARCHIVE_BYTES >> 20} MiB.",
                       field="images")
    if upload is not None and (upload.owner_id != owner.pk or not upload.complete):
        raise JobError("Use a finished upload of your own.", field="upload")
    names = [_safe_name(f.name or "image") for f in files] + ([upload.filename] if upload else [])
    archives = sum(1 for n in names if n.lower().endswith(ARCHIVE_SUFFIXES))
    images = len(names) - archives
    parts = [f"{images} image{'s' if images != 1 else ''}"] if images else []
    parts += [n for n in names if n.lower().endswith(ARCHIVE_SUFFIXES)][:3]
    description = "uploaded: " + ", ".join(parts)

    def write(directory: Path) -> None:
        inputs = directory / FILES_DIR
        inputs.mkdir(exist_ok=True)
        used: set[str] = set()
        for upload_file, name in zip(files, names):
            if name.lower().endswith(ARCHIVE_SUFFIXES):
                target = directory / ARCHIVES_DIR / name
                target.parent.mkdir(exist_ok=True)
            else:
                unique = name
                n = 1
                while unique in used:
                    stem, dot, ext = name.rpartition(".")
                    unique = f"{stem or ext}-{n}{dot}{ext if stem else ''}"
                    n += 1
                used.add(unique)
                target = inputs / unique
            with target.open("wb") as out:
                for chunk in upload_file.chunks():
                    out.write(chunk)
        if upload is not None:
            (directory / ARCHIVES_DIR).mkdir(exist_ok=True)
            target = directory / ARCHIVES_DIR / _safe_name(upload.filename)
            try:
                os.link(upload.path, target)  # the same disk: no copy of a large archive
            except OSError:
                shutil.copyfile(upload.path, target)

    return _create(owner, model, snapshot.epoch, EvaluationSource.FILES, description=description[:300], write=write)


LIST_FILE, FILES_DIR, ARCHIVES_DIR = "inputs.txt", "inputs", "archives"


def _safe_name(name: str) -> str:
    """An uploaded file's own name, without any folder part, safe to put on disk."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    safe = "".join(c if c.isalnum() or c in "-_. " else "_" for c in base).strip(" .") or "image"
    return safe[:120]


def _check_split(model: TrainedModel, split: str) -> str:
    dataset = model.dataset
    if split not in dataset.splits:
        have = ", ".join(dataset.splits) or "none"
        raise JobError(f"Dataset {dataset.job.name!r} has no {split} split (it has: {have}).", field="split")
    if not dataset.counts.get(split):
        raise JobError(f"The {split} split of {dataset.job.name!r} has no images.", field="split")
    return split


def _create(
    owner: User, model: TrainedModel, epoch: float, source: str, *, split: str = "", description: str = "",
    write: Callable[[Path], object] | None = None, image_folder: str = "",
) -> Evaluation:
    """The job and its row; then its input files, in its folder (if writing them fails,
    the job goes with them: nothing half-stored); then it is queued."""
    name = f"{model.job.name} · epoch {epoch:g} · {split or description}"[:200]
    with transaction.atomic():
        job = job_create(kind=EVALUATION_KIND, name=name, owner=owner, group=model.job.group, visibility=model.job.visibility)
        evaluation = Evaluation.objects.create(
            job=job, model=model, epoch=epoch, source=source, split=split, description=description,
            image_folder=image_folder,
        )
    if write is not None:
        try:
            write(evaluation.directory)
        except OSError as exc:
            job_delete(job)
            raise JobError(f"Could not store the images to classify ({exc.strerror or exc}). The disk may be full.") from exc
        storage.publish(evaluation.directory)  # read by the evaluation, maybe on another host
    job_enqueue(job.pk, from_=[JobStatus.INITIALIZED])
    return evaluation


def evaluation_spec(evaluation: Evaluation) -> EvalSpec:
    model, dataset = evaluation.model, evaluation.model.dataset
    snapshot = snapshot_for(model, evaluation.epoch)
    directory = evaluation.directory
    archives = sorted(str(p) for p in (directory / ARCHIVES_DIR).iterdir()) if (directory / ARCHIVES_DIR).is_dir() else []
    return EvalSpec(
        output_dir=str(directory),
        weights=str(snapshot.path),
        network=model.network,
        custom_code=model.custom_code if model.network == Network.CUSTOM else "",
        input_shape=input_size(dataset, model.crop_size),
        num_classes=dataset.num_classes,
        db=str(dataset.split_path(evaluation.split)) if evaluation.source == EvaluationSource.SPLIT else "",
        mean=str(dataset.mean_path),
        crop_size=model.crop_size or 0,
        mean_subtraction=model.mean_subtraction,
        batch_size=EVALUATION_BATCH,
        source=evaluation.source,
        list_file=str(directory / LIST_FILE),
        image_folder=evaluation.image_folder,
        files_dir=str(directory / FILES_DIR),
        archives=tuple(archives),
        data_roots=tuple(str(r) for r in settings.DATA_ROOTS),
        labels=tuple(dataset.labels),
        width=dataset.image_width,
        height=dataset.image_height,
        channels=dataset.channels,
        resize_mode=dataset.resize_mode,
        max_extract_bytes=settings.MAX_ARCHIVE_EXTRACT_BYTES,
        task=dataset.task,
        labels_db=str(dataset.label_split_path(evaluation.split)) if dataset.is_segmentation else "",
        objects=str(dataset.objects_path(evaluation.split)) if dataset.is_detection else "",
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
    labels: np.ndarray  # (N,), NO_LABEL (-1) where an image has no ground truth
    names: np.ndarray | None = None  # classify many from files: each image as the user named it

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def labeled(self) -> np.ndarray:
        return self.labels != NO_LABEL


def predictions_file(evaluation: Evaluation) -> Path:
    """The finished evaluation's predictions.npz, here (from the artifact store when it ran
    on another host)."""
    path = evaluation.directory / PREDICTIONS
    if evaluation.job.status == JobStatus.DONE:
        storage.fetch(path)
    if evaluation.job.status != JobStatus.DONE or not path.exists():
        raise JobError("This evaluation has no results yet.")
    return path


def evaluation_predictions(evaluation: Evaluation) -> Predictions:
    with np.load(predictions_file(evaluation)) as data:
        names = data["names"] if "names" in data.files else None
        return Predictions(data["probabilities"].astype(np.float32), data["labels"], names)


def image_names(evaluation: Evaluation, p: Predictions, positions: list[int]) -> list[str | None]:
    """Where each image came from: its file in the dataset's source (a split), or its
    name in the list or the upload."""
    if p.names is not None:
        return [str(p.names[i]) for i in positions]
    return read_paths(evaluation.model.dataset.directory, evaluation.split, positions)


def evaluation_input_image(evaluation: Evaluation, index: int) -> bytes:
    """One classified file (classify many), at the dataset's size, as PNG. Served only from
    the evaluation's own folder (uploads) or the data roots (a list)."""
    path = evaluation.directory / PREDICTIONS
    if evaluation.source != EvaluationSource.SPLIT and evaluation.job.status == JobStatus.DONE:
        storage.fetch(evaluation.directory)  # its predictions and uploaded inputs, when it ran elsewhere
    if evaluation.source == EvaluationSource.SPLIT or not path.exists():
        raise NotFound("This evaluation has no such image.")
    with np.load(path) as data:
        files = data["files"]
        if not 0 <= index < len(files):
            raise NotFound("This evaluation has no such image.")
        file = Path(str(files[index])).resolve()
    if not is_under(file, [evaluation.directory.resolve(), *settings.DATA_ROOTS]):
        raise NotFound("This evaluation has no such image.")
    dataset = evaluation.model.dataset
    try:
        img = resize_image(load_image(file, dataset.channels), dataset.image_width, dataset.image_height, dataset.resize_mode)
    except (OSError, ValueError) as exc:
        raise NotFound(f"The image can no longer be read ({exc}).") from None
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def _label_name(labels: list[str], label: int) -> str | None:
    if label == NO_LABEL:
        return None
    return labels[label] if label < len(labels) else str(label)


def _rows(evaluation: Evaluation, positions: np.ndarray, p: Predictions, score_class: int | None = None) -> list[dict[str, Any]]:
    labels = evaluation.labels
    out = []
    paths = image_names(evaluation, p, positions.tolist())
    for position, path in zip(positions.tolist(), paths):
        predicted = int(p.predicted[position])
        label = int(p.labels[position])
        out.append({
            "index": position,  # the image's index: in the split, or in the classified files
            "path": path,  # its file in the dataset's source, or its name in the list or upload
            "label": label, "label_name": _label_name(labels, label),
            "predicted": predicted, "predicted_name": labels[predicted] if predicted < len(labels) else str(predicted),
            "confidence": float(p.probabilities[position, predicted]),
            "score": float(p.probabilities[position, score_class]) if score_class is not None else None,
        })
    return out


def evaluation_images(
    evaluation: Evaluation, *, view: str, label: int | None = None, predicted: int | None = None, page: int = 1, per_page: int = 48
) -> dict[str, Any]:
    """A page of images from the predictions.

    view="all": every image, in order; "mistakes": misclassified images, most confident first (optionally of the given
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
    elif view == "all":
        positions = np.arange(len(p.labels))
    elif view in ("mistakes", "cell"):
        mask = (p.predicted != p.labels) & p.labeled if view == "mistakes" else p.labeled.copy()
        if view == "cell" and (label is None or predicted is None):
            raise JobError("A confusion-matrix cell needs both label and predicted.", field="label")
        if label is not None:
            mask &= p.labels == label
        if predicted is not None:
            mask &= p.predicted == predicted
        candidates = np.nonzero(mask)[0]
        positions = candidates[np.argsort(-confidence[candidates], kind="stable")]
    else:
        raise JobError("view must be all, mistakes, cell or top.", field="view")
    per_page = max(1, min(per_page, 200))
    pages = max(1, -(-len(positions) // per_page))
    page = max(1, min(page, pages))
    chosen = positions[(page - 1) * per_page : page * per_page]
    return {
        "view": view, "label": label, "predicted": predicted, "page": page, "pages": pages, "per_page": per_page,
        "total": int(len(positions)), "images": _rows(evaluation, chosen, p, score_class),
    }


def evaluation_csv(evaluation: Evaluation) -> str:
    """One row per image: its index, where it came from, its given label (empty when it has
    none), whether the top prediction is right, and the top-5 with probabilities."""
    p = evaluation_predictions(evaluation)
    labels = evaluation.labels
    k = min(5, p.probabilities.shape[1])
    top = np.argsort(-p.probabilities, axis=1, kind="stable")[:, :k]
    names = image_names(evaluation, p, list(range(len(p.labels))))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["index", "image", "label", "correct", *[f"{kind}{i + 1}" for i in range(k) for kind in ("prediction", "probability")]])
    for position in range(len(p.labels)):
        label = int(p.labels[position])
        correct = "" if label == NO_LABEL else int(top[position, 0] == label)
        row: list[Any] = [position, names[position] or "", _label_name(labels, label) or "", correct]
        for j in top[position]:
            row += [labels[int(j)], f"{p.probabilities[position, j]:.6f}"]
        writer.writerow(row)
    return out.getvalue()


def evaluation_compare(a: Evaluation, b: Evaluation) -> dict[str, Any]:
    """Two evaluations side by side (two snapshots, or two models on the same classes):
    their summaries, the per-class deltas (b - a) and the confusion-matrix difference."""
    for evaluation in (a, b):
        if evaluation.metrics.get("task", "classification") != "classification":
            raise JobError("Side-by-side comparison is for classification evaluations; compare segmentation and detection "
                           "runs on the models' Compare page, by their validation metrics.", field="a" if evaluation is a else "b")
        if not evaluation.metrics:
            raise JobError(f"Evaluation #{evaluation.pk} has no results yet.", field="a" if evaluation is a else "b")
        if evaluation.metrics.get("top1") is None:
            raise JobError(f"Evaluation #{evaluation.pk} has no images with ground truth to compare.", field="a" if evaluation is a else "b")
    if a.labels != b.labels:
        raise JobError("These evaluations are on different classes; compare evaluations of models trained on the same labels.", field="b")
    ma, mb = a.metrics, b.metrics
    same_images = a.source == b.source == EvaluationSource.SPLIT and a.split == b.split and a.model.dataset_id == b.model.dataset_id
    if not same_images or ma["images"] != mb["images"]:
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
