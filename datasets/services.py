"""Writes for datasets: validation of a request, creation, queueing, build results."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction

from workers.models import JobKind, JobStatus
from workers.services import JobError, job_create, job_delete, job_fail, job_transition

from .build import OUTPUTS
from .imaging import IMAGE_EXTENSIONS
from .models import Dataset, ImageMode, ResizeMode

MAX_IMAGE_SIDE = 4096


def resolve_data_folder(folder: str) -> Path:
    """Resolve a server folder and check it lies under one of DIGITS_DATA_ROOTS.

    Symlinks and `..` are resolved first, so neither can lead outside the roots."""
    if not folder or "\x00" in folder:
        raise JobError("Give the path of a server folder.", field="folder")
    path = Path(folder).expanduser()
    try:
        resolved = path.resolve(strict=True)
    except (FileNotFoundError, RuntimeError, OSError):
        raise JobError(f"Folder {folder} does not exist on the server.", field="folder") from None
    roots = settings.DATA_ROOTS
    if not any(resolved == root or root in resolved.parents for root in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise JobError(f"Folder {folder} is outside the allowed data roots ({allowed}). Ask an admin to add it to DIGITS_DATA_ROOTS.", field="folder")
    if not resolved.is_dir():
        raise JobError(f"{folder} is not a folder.", field="folder")
    return resolved


def check_class_folders(folder: Path) -> list[str]:
    """At least two class subfolders that hold at least one image file each."""
    classes = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if any(f.suffix.lower() in IMAGE_EXTENSIONS for f in sub.rglob("*") if f.is_file()):
            classes.append(sub.name)
    if len(classes) < 2:
        found = ", ".join(classes) or "none"
        raise JobError(
            f"{folder} must contain one subfolder of images per class, and at least two classes (found: {found}).",
            field="folder",
        )
    return classes


@transaction.atomic
def dataset_create(
    *,
    owner,  # noqa: ANN001
    name: str,
    folder: str,
    image_width: int = 28,
    image_height: int = 28,
    image_mode: str = ImageMode.COLOR,
    resize_mode: str = ResizeMode.SQUASH,
    val_percent: float = 25.0,
    seed: int = 0,
) -> Dataset:
    resolved = resolve_data_folder(folder)
    check_class_folders(resolved)
    if not (1 <= image_width <= MAX_IMAGE_SIDE and 1 <= image_height <= MAX_IMAGE_SIDE):
        raise JobError(f"Image width and height must be between 1 and {MAX_IMAGE_SIDE} pixels.")
    if not 0 <= val_percent < 100:
        raise JobError("The validation percentage must be at least 0 and below 100.")
    job = job_create(kind=JobKind.DATASET, name=name, owner=owner)
    dataset = Dataset.objects.create(
        job=job,
        folder=str(resolved),
        image_width=image_width,
        image_height=image_height,
        image_mode=image_mode,
        resize_mode=resize_mode,
        val_percent=val_percent,
        seed=seed,
    )
    job_transition(job.pk, JobStatus.QUEUED, from_=[JobStatus.INITIALIZED])
    from .tasks import dataset_build_task

    transaction.on_commit(lambda: dataset_build_task.delay(job.pk))
    return dataset


def dataset_build_spec(dataset: Dataset) -> dict[str, Any]:
    return {
        "folder": dataset.folder,
        "output_dir": str(dataset.directory),
        "width": dataset.image_width,
        "height": dataset.image_height,
        "channels": dataset.channels,
        "resize_mode": dataset.resize_mode,
        "val_percent": dataset.val_percent,
        "seed": dataset.seed,
    }


def dataset_store_result(dataset: Dataset, result: dict[str, Any]) -> None:
    dataset.labels = result["labels"]
    dataset.counts = result["counts"]
    dataset.class_counts = result["class_counts"]
    dataset.skipped = result["skipped"]
    dataset.mean_pixel = result["mean_pixel"]
    dataset.save(update_fields=["labels", "counts", "class_counts", "skipped", "mean_pixel"])


def dataset_remove_partial(dataset: Dataset) -> None:
    """After a failed or aborted build: nothing half-written stays on disk."""
    shutil.rmtree(dataset.directory / "build.tmp", ignore_errors=True)
    for name in OUTPUTS:
        path = dataset.directory / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def dataset_build_run(job_id: int) -> None:
    """Run a queued build (called by the Celery task) and record its outcome."""
    from workers.runner import run_job

    results: dict[str, Any] = {}

    def handle(batch: list[dict[str, Any]]) -> None:
        for event in batch:
            if event.get("event") == "result":
                results.update(event)

    outcome = run_job(job_id, "datasets.build", lambda job: dataset_build_spec(job.dataset), handle)
    if outcome is None:
        return
    dataset = Dataset.objects.filter(pk=job_id).select_related("job").first()
    if dataset is None:  # deleted while building; run_job removed its folder
        return
    if outcome.stopped or outcome.returncode != 0 or not results:
        dataset_remove_partial(dataset)
        if not outcome.stopped and outcome.returncode == 0:
            job_fail(job_id, "The build ended without reporting a result; see the log.")
        return
    dataset_store_result(dataset, results)
    skipped = len(results["skipped"])
    note = f"{skipped} file(s) skipped; see the report on the dataset page." if skipped else ""
    job_transition(job_id, JobStatus.DONE, from_=[JobStatus.RUNNING], message=note)


def dataset_delete(dataset: Dataset) -> None:
    users = list(dataset.models.select_related("job").values_list("job__name", flat=True)[:5])
    if users:
        raise JobError(
            f"This dataset is used by model(s) {', '.join(users)}. Delete those models first, then the dataset."
        )
    job_delete(dataset.job)
