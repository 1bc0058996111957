"""Exports: a snapshot turned into ONNX and torch.export files, each checked against
PyTorch before it is offered (the kind is in models_app/kind.py, its child is
models_app/export_verify.py), and the files a download takes from them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import QuerySet

from workers import storage
from workers.errors import Conflict, JobError
from workers.models import JobStatus
from workers.services import job_create, job_enqueue

from .export_verify import FILES, WEIGHTS, ExportSpec
from .models import EXPORT_KIND, Export, ExportFormat, Network, Snapshot, TrainedModel
from .services import input_size, snapshot_for

FORMAT_NAMES = dict(ExportFormat.choices)


def export_list() -> QuerySet[Export]:
    return Export.objects.select_related("job", "job__owner", "model", "model__job", "model__dataset")


def verification_split(model: TrainedModel) -> str:
    """Validation images when there are some: what the model was not trained on."""
    counts = model.dataset.counts
    for split in ("val", "test", "train"):
        if counts.get(split):
            return split
    raise JobError(f"Dataset {model.dataset.job.name!r} has no images to verify an export with.")


@transaction.atomic
def export_create(*, owner: User, model: TrainedModel, epoch: float | None) -> Export:
    """Queue an export of the snapshot of `epoch` (None: the latest) to every format."""
    snapshot = snapshot_for(model, epoch, field="epoch")
    verification_split(model)
    name = f"{model.job.name} · epoch {snapshot.epoch:g} · export"
    job = job_create(kind=EXPORT_KIND, name=name, owner=owner, group=model.job.group, visibility=model.job.visibility)
    export = Export.objects.create(job=job, model=model, epoch=snapshot.epoch)
    job_enqueue(job.pk, from_=[JobStatus.INITIALIZED])
    return export


def export_spec(export: Export) -> ExportSpec:
    model, dataset = export.model, export.model.dataset
    snapshot = snapshot_for(model, export.epoch)
    return ExportSpec(
        output_dir=str(export.directory),
        weights=str(snapshot.path),
        network=model.network,
        custom_code=model.custom_code if model.network == Network.CUSTOM else "",
        input_shape=input_size(dataset, model.crop_size),
        num_classes=dataset.num_classes,
        db=str(dataset.split_path(verification_split(model))),
        mean=str(dataset.mean_path),
        crop_size=model.crop_size or 0,
        mean_subtraction=model.mean_subtraction,
        task=dataset.task,
        # A detector goes to ONNX only (torch.export cannot take its post-processing).
        formats=("onnx",) if dataset.is_detection else ("onnx", "pt2"),
    )


def export_store_result(export_id: int, result: dict[str, Any]) -> None:
    Export.objects.filter(pk=export_id).update(results=result)


def export_remove_partial(export_id: int) -> None:
    """After a failed or aborted run: no file stays that was not checked."""
    export = Export.objects.filter(pk=export_id).select_related("job").first()
    if export is not None:
        for name in (WEIGHTS, *FILES.values()):
            (export.directory / name).unlink(missing_ok=True)
        Export.objects.filter(pk=export_id).update(results={})


def export_summary(results: dict[str, Any]) -> str:
    formats = results.get("formats", {})
    parts = []
    for name in ExportFormat.values:  # in a fixed order: jsonb keeps no key order
        r = formats.get(name)
        if r is not None:
            figures = f" (max diff {r['max_abs_diff']:.2g}, p50 {r['p50_ms']:.1f} ms)" if r["status"] == "passed" else ""
            parts.append(f"{FORMAT_NAMES[name]} {r['status']}{figures}")
    return "; ".join(parts) + f", on {results.get('images', 0)} images."


def export_rows(export: Export) -> list[dict[str, Any]]:
    """The table on the model page: PyTorch's own figures first, then one row per format."""
    formats = export.results.get("formats", {})
    rows = []
    for name in ("pytorch", *ExportFormat.values):
        if name in formats:
            rows.append({**formats[name], "label": "PyTorch (eager)" if name == "pytorch" else FORMAT_NAMES[name]})
    return rows


# -- what downloads take -------------------------------------------------------------------


def export_for(model: TrainedModel, snapshot: Snapshot) -> Export | None:
    """The newest finished export of this snapshot."""
    return (
        export_list()
        .filter(model=model, epoch__gt=snapshot.epoch - 5e-5, epoch__lt=snapshot.epoch + 5e-5, job__status=JobStatus.DONE)
        .order_by("-job__created_at", "-pk")
        .first()
    )


def export_file(export: Export | None, fmt: str) -> Path | None:
    """The checked file of `fmt` (onnx, pt2), when that export passed."""
    if export is None or not export.passed(fmt):
        return None
    path = storage.fetch(export.directory / FILES[fmt])
    return path if path.exists() else None


def require_export_file(model: TrainedModel, snapshot: Snapshot, fmt: str) -> tuple[Export, Path]:
    export = export_for(model, snapshot)
    path = export_file(export, fmt)
    if export is None or path is None:
        label = FORMAT_NAMES.get(fmt, fmt)
        if export is None:
            raise Conflict(
                f"The snapshot at epoch {snapshot.epoch:g} has no finished export yet. Export it first (the model page's "
                f"\"Export and verify\", or POST /api/models/{model.pk}/exports/); {label} is offered once it passed its check.",
            )
        raise Conflict(
            f"The {label} export of epoch {snapshot.epoch:g} did not pass its check: "
            f"{export.results.get('formats', {}).get(fmt, {}).get('error') or 'see the export job'}.",
        )
    return export, path
