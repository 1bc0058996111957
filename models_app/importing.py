"""Import a model trained elsewhere (DIGITS' "pretrained model" upload): an archive
downloaded from this system, or a PyTorch state dict (torchvision's, for one) with the
name of its network. It becomes a model of its own, finished, with one snapshot, for a
dataset whose classes and image size it fits (the dataset gives its labels, mean image and
preprocessing): it can classify, be evaluated, exported, and fine-tuned like any other.

The weights are loaded and run once in the sandbox child (models_app/sandbox.py), never in
the web process; custom network code needs its permission as for training. Anything wrong
(not an archive, no info.json, weights that do not fit, a dataset of another shape) is
refused with a message, and nothing of the upload is kept."""
from __future__ import annotations

import json
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction

from datasets.models import Dataset
from datasets.sources import SourceError, extract_archive
from workers import storage
from workers.errors import JobError
from workers.models import JobStatus, Visibility
from workers.permissions import can_view
from workers.services import job_create, job_delete
from workers.transitions import job_transition

from .models import MODEL_KIND, MeanSubtraction, Network, Snapshot, TrainedModel
from .networks import check_input
from .sandbox import SandboxError, run_sandboxed
from .services import can_submit_code, input_size

ARCHIVES = (".tar.gz", ".tgz", ".tar", ".zip")
WEIGHTS = (".pt", ".pth")
SNAPSHOT = "snapshot_imported.pt"


def _suffix(name: str) -> str:
    lower = name.lower()
    return next((s for s in (*ARCHIVES, *WEIGHTS) if lower.endswith(s)), "")


def _read_archive(archive: Path, into: Path) -> tuple[dict[str, Any], Path, str]:
    """(info.json, model.pt, network.py's code) from an archive this system made."""
    if not (tarfile.is_tarfile(archive) or zipfile.is_zipfile(archive)):
        raise JobError("This file is not a .tar.gz or .zip archive.", field="file")
    try:
        extract_archive(archive, into, max_bytes=settings.MAX_ARCHIVE_EXTRACT_BYTES)
    except SourceError as exc:
        raise JobError(str(exc), field="file") from None
    infos = sorted(into.rglob("info.json"), key=lambda p: len(p.parts))
    if not infos:
        raise JobError(
            "The archive has no info.json: import an archive downloaded from a model's page, or upload the "
            "weights file (.pt) alone with its network's name.", field="file",
        )
    folder = infos[0].parent
    try:
        info = json.loads(infos[0].read_text())
        assert isinstance(info, dict)
    except (ValueError, AssertionError, UnicodeDecodeError):
        raise JobError("The archive's info.json cannot be read as JSON.", field="file") from None
    if not (folder / "model.pt").is_file():
        raise JobError("The archive has no model.pt beside its info.json.", field="file")
    code = (folder / "network.py").read_text(errors="replace") if (folder / "network.py").is_file() else ""
    return info, folder / "model.pt", code


def _params_from_info(info: dict[str, Any], dataset: Dataset, code: str) -> dict[str, Any]:
    """The model's parameters from an archive's info.json, checked against the dataset."""
    network = str(info.get("network", ""))
    if network not in Network.values:
        raise JobError(f"The archive's network {network!r} is not one this system knows.", field="file")
    classes = info.get("num_classes")
    labels = info.get("labels") or []
    if classes != dataset.num_classes:
        raise JobError(
            f"The archive's model has {classes} classes ({', '.join(map(str, labels[:5]))}{'…' if len(labels) > 5 else ''}); "
            f"dataset {dataset.job.name!r} has {dataset.num_classes}. Pick a dataset with the same classes.", field="dataset",
        )
    crop = info.get("crop_size") or None
    expected = list(input_size(dataset, crop))
    if list(info.get("input_shape", [])) != expected:
        raise JobError(
            f"The archive's model takes {'x'.join(map(str, info.get('input_shape', [])))} inputs; dataset "
            f"{dataset.job.name!r} gives {'x'.join(map(str, expected))}. Pick a dataset of the same image size and mode.",
            field="dataset",
        )
    mean = info.get("mean_subtraction", MeanSubtraction.IMAGE)
    return {
        "network": network, "custom_code": code if network == Network.CUSTOM else "", "crop_size": crop,
        "mean_subtraction": mean if mean in MeanSubtraction.values else MeanSubtraction.IMAGE,
        "epoch": float(info.get("epoch") or 0), "val_accuracy": info.get("val_accuracy"), "val_loss": info.get("val_loss"),
        "labels": labels,
    }


def model_import(
    *,
    owner: User,
    name: str,
    dataset: Dataset,
    file: UploadedFile,
    network: str = "",
    custom_code: str = "",
    crop_size: int | None = None,
    mean_subtraction: str = MeanSubtraction.IMAGE,
    group: str = "",
    notes: str = "",
    visibility: str = Visibility.TEAM,
) -> TrainedModel:
    if not can_view(owner, dataset):
        raise JobError("No such dataset: pick one of yours, your teams' or a public one.", field="dataset")
    filename = (file.name or "").replace("\\", "/").rsplit("/", 1)[-1]
    suffix = _suffix(filename)
    if not suffix:
        raise JobError(
            f"Upload an archive downloaded from a model ({', '.join(ARCHIVES)}) or a weights file ({', '.join(WEIGHTS)}); "
            f"got {filename or 'no file'}.", field="file",
        )
    if (file.size or 0) > settings.MAX_UPLOAD_ARCHIVE_BYTES:
        raise JobError(f"The file is larger than {settings.MAX_UPLOAD_ARCHIVE_BYTES >> 20} MiB.", field="file")
    if dataset.job.status != JobStatus.DONE:
        raise JobError(f"Dataset {dataset.job.name!r} is not built yet; import once it is done.", field="dataset")
    if suffix in WEIGHTS and network not in Network.values:
        raise JobError("Name the network these weights belong to.", field="network")

    with transaction.atomic():
        job = job_create(kind=MODEL_KIND, name=name, owner=owner, group=group, notes=notes, visibility=visibility)
        model = TrainedModel.objects.create(
            job=job, dataset=dataset, network=Network.LENET, imported_from=filename[:300], epochs=0.01,
        )
    try:
        model = _store(model, dataset, file, suffix, network, custom_code, crop_size, mean_subtraction)
    except BaseException:
        job_delete(job)  # nothing half-stored: the row and every file go
        raise
    return model


def _store(
    model: TrainedModel, dataset: Dataset, file: UploadedFile, suffix: str, network: str, custom_code: str,
    crop_size: int | None, mean_subtraction: str,
) -> TrainedModel:
    directory = model.directory
    upload = directory / f"upload{suffix}"
    with upload.open("wb") as out:
        for chunk in file.chunks():
            out.write(chunk)
    extra: dict[str, Any] = {"epoch": 0.0, "val_accuracy": None, "val_loss": None, "labels": []}
    if suffix in ARCHIVES:
        info, weights, code = _read_archive(upload, directory / "import.tmp")
        params = _params_from_info(info, dataset, code)
        extra = {k: params.pop(k) for k in ("epoch", "val_accuracy", "val_loss", "labels")}
    else:
        weights = upload
        params = {"network": network, "custom_code": custom_code if network == Network.CUSTOM else "",
                  "crop_size": crop_size, "mean_subtraction": mean_subtraction}
    if params["network"] == Network.CUSTOM:
        if not can_submit_code(model.job.owner):
            raise JobError("Importing a custom network runs its code: that needs the 'Can train networks from custom "
                           "PyTorch code' permission. Ask an admin.", field="file")
        if not params["custom_code"].strip():
            raise JobError("A custom network needs its code (network.py, or the code field).", field="custom_code")
    crop = params["crop_size"]
    if crop and crop > min(dataset.image_width, dataset.image_height):
        raise JobError(f"The crop size must fit in the dataset's {dataset.image_width}x{dataset.image_height} images.", field="crop_size")
    shape = input_size(dataset, crop)
    if params["network"] != Network.CUSTOM:
        try:
            check_input(params["network"], Network(params["network"]).label, shape)
        except ValueError as exc:
            raise JobError(f"{exc} Pick a dataset of another image size.", field="dataset") from None
    try:
        reply = run_sandboxed({
            "task": "import", "network": params["network"], "code": params["custom_code"], "input_shape": list(shape),
            "num_classes": dataset.num_classes, "weights": str(weights), "out": str(directory / SNAPSHOT),
        })
    except SandboxError as exc:
        where = f" (line {exc.line} of the network code)" if exc.line else ""
        raise JobError(f"{exc}{where}", field="file") from None
    for name, value in params.items():
        setattr(model, name, value)
    label_note = ""
    if extra["labels"] and list(extra["labels"]) != list(dataset.labels):
        label_note = f" Its labels were {', '.join(map(str, extra['labels'][:10]))}; it now uses the dataset's: {', '.join(dataset.labels[:10])}."
    notices = [f"Imported from {model.imported_from} ({reply['params']:,} parameters) for dataset {dataset.job.name!r}.{label_note}"]
    if reply.get("reinitialised"):
        notices.append(
            f"The weights were for {reply['classes_before']} classes; the classifier ({', '.join(reply['reinitialised'])}) starts "
            f"afresh for this dataset's {dataset.num_classes}. Fine-tune this model (its snapshot's \"Fine-tune\") before "
            "trusting its predictions."
        )
    model.notices = notices
    model.save()
    Snapshot.objects.create(
        model=model, epoch=extra["epoch"], iteration=0, filename=SNAPSHOT,
        val_accuracy=extra["val_accuracy"], val_loss=extra["val_loss"],
    )
    upload.unlink()
    shutil.rmtree(directory / "import.tmp", ignore_errors=True)
    if params["network"] == Network.CUSTOM:
        (directory / "network.py").write_text(params["custom_code"])
    storage.publish(directory)  # its snapshot, for every host
    job_transition(model.pk, JobStatus.DONE, from_=[JobStatus.INITIALIZED], message=f"Imported from {model.imported_from}.")
    model.job.refresh_from_db()
    return model
