"""Writes for models: creation with validation, the training run, metrics and snapshots."""
from __future__ import annotations

import math
from typing import Any

from django.conf import settings
from django.db import transaction

from datasets.models import Dataset
from workers.models import JobKind, JobStatus
from workers.services import JobError, job_create, job_delete, job_transition

from .models import Metric, Network, Snapshot, Solver, TrainedModel

LIMITS = {"epochs": (1, 10_000), "batch_size": (1, 65_536)}


def validate_hyperparameters(*, epochs: int, batch_size: int, learning_rate: float, momentum: float, weight_decay: float) -> None:
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        low, high = LIMITS[name]
        if not low <= value <= high:
            raise JobError(f"{name.replace('_', ' ').capitalize()} must be between {low} and {high}.")
    if not (math.isfinite(learning_rate) and 0 < learning_rate <= 10):
        raise JobError("The learning rate must be a number above 0 and at most 10 (0.01 is a good start for LeNet).")
    if not (math.isfinite(momentum) and 0 <= momentum < 1):
        raise JobError("Momentum must be at least 0 and below 1.")
    if not (math.isfinite(weight_decay) and 0 <= weight_decay < 1):
        raise JobError("Weight decay must be at least 0 and below 1.")


@transaction.atomic
def model_create(
    *,
    owner,  # noqa: ANN001
    name: str,
    dataset: Dataset,
    network: str = Network.LENET,
    solver: str = Solver.SGD,
    epochs: int = 10,
    batch_size: int = 64,
    learning_rate: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> TrainedModel:
    if dataset.job.status in (JobStatus.ERROR, JobStatus.ABORTED):
        raise JobError(f"Dataset {dataset.job.name!r} did not build ({dataset.job.status}); pick another dataset or rebuild it.")
    validate_hyperparameters(
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay
    )
    job = job_create(kind=JobKind.MODEL, name=name, owner=owner)
    model = TrainedModel.objects.create(
        job=job,
        dataset=dataset,
        network=network,
        solver=solver,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        momentum=momentum,
        weight_decay=weight_decay,
        seed=seed,
    )
    job_transition(job.pk, JobStatus.QUEUED, from_=[JobStatus.INITIALIZED])
    from .tasks import model_train_task

    transaction.on_commit(lambda: model_train_task.delay(job.pk))
    return model


def model_train_spec(model: TrainedModel) -> dict[str, Any]:
    dataset = model.dataset
    return {
        "network": model.network,
        "num_classes": dataset.num_classes,
        "input_shape": [dataset.channels, dataset.image_height, dataset.image_width],
        "train_db": str(dataset.split_path("train")),
        "val_db": str(dataset.split_path("val")),
        "mean_path": str(dataset.mean_path),
        "epochs": model.epochs,
        "batch_size": model.batch_size,
        "learning_rate": model.learning_rate,
        "momentum": model.momentum,
        "weight_decay": model.weight_decay,
        "seed": model.seed,
        "output_dir": str(model.directory),
    }


def model_record_events(model_id: int, batch: list[dict[str, Any]]) -> None:
    """Store a batch of the child's metric and snapshot events, then publish them live
    (after commit) as one websocket message."""
    from workers.events import publish

    rows: list[Metric] = []
    points: list[dict[str, Any]] = []
    snapshots: list[dict[str, Any]] = []
    for event in batch:
        kind = event.get("event")
        if kind == "metrics":
            for name, value in event["values"].items():
                if value is None:
                    continue
                rows.append(Metric(model_id=model_id, name=name, iteration=event["iteration"], epoch=event["epoch"], value=value))
                points.append({"name": name, "iteration": event["iteration"], "epoch": event["epoch"], "value": value})
        elif kind == "snapshot":
            snapshots.append(event)
    if not rows and not snapshots:
        return
    with transaction.atomic():
        Metric.objects.bulk_create(rows, batch_size=1000)
        for snap in snapshots:
            Snapshot.objects.update_or_create(
                model_id=model_id,
                epoch=snap["epoch"],
                defaults={"filename": snap["filename"], "val_loss": snap.get("val_loss"), "val_accuracy": snap.get("val_accuracy")},
            )
        publish(model_id, {"type": "metrics", "points": points, "snapshots": [s["epoch"] for s in snapshots]})


def model_train_run(job_id: int) -> None:
    """Run a queued training job (called by the Celery task)."""
    from workers.runner import run_job

    model = TrainedModel.objects.select_related("dataset__job").get(pk=job_id)
    if not _wait_for_dataset(model):
        return
    outcome = run_job(job_id, "workers.train", lambda job: model_train_spec(job.model), lambda b: model_record_events(job_id, b))
    if outcome is None or outcome.stopped or outcome.returncode != 0:
        return
    job_transition(job_id, JobStatus.DONE, from_=[JobStatus.RUNNING])


def _wait_for_dataset(model: TrainedModel) -> bool:
    """A model on a dataset that is still building waits for it; a failed dataset fails
    the model with the reason."""
    import time

    from workers.services import job_fail

    while True:
        dataset_job = model.dataset.job
        dataset_job.refresh_from_db(fields=["status", "error"])
        if dataset_job.status == JobStatus.DONE:
            return True
        if dataset_job.status in (JobStatus.ERROR, JobStatus.ABORTED):
            job_fail(model.pk, f"Dataset {dataset_job.name!r} did not build ({dataset_job.status}): {dataset_job.error}")
            return False
        if not TrainedModel.objects.filter(pk=model.pk, job__status=JobStatus.QUEUED).exists():
            return False
        time.sleep(1.0)


def model_delete(model: TrainedModel) -> None:
    job_delete(model.job)


def snapshot_for(model: TrainedModel, epoch: int | None) -> Snapshot:
    """The snapshot of `epoch`, or the latest one."""
    snapshots = model.snapshots.all()
    snapshot = snapshots.filter(epoch=epoch).first() if epoch else snapshots.order_by("-epoch").first()
    if snapshot is None:
        if epoch:
            raise JobError(f"This model has no snapshot for epoch {epoch}.")
        raise JobError("This model has no snapshot yet; wait for its first epoch to finish.")
    return snapshot


def model_classify_upload(model: TrainedModel, epoch: int | None, upload) -> tuple[Snapshot, list[dict[str, Any]]]:  # noqa: ANN001
    """Classify one uploaded image (used by the page and the API): size-checked, with the
    snapshot of `epoch` or the latest. Every failure is a JobError the user can act on."""
    from .inference import classify_image

    limit = settings.MAX_UPLOAD_IMAGE_BYTES
    if upload.size > limit:
        raise JobError(f"The image is larger than {limit // (1024 * 1024)} MiB; upload a smaller one.")
    snapshot = snapshot_for(model, epoch)
    try:
        return snapshot, classify_image(model, snapshot, upload)
    except ValueError as exc:
        raise JobError(f"Could not classify this file: {exc}") from exc
