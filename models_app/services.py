"""Writes for models: validated creation (standard, fine-tuned or custom networks), the
training run and its events, resume, clone and delete."""
from __future__ import annotations

import base64
import io
import logging

import shutil
from dataclasses import asdict
from collections.abc import Mapping
from typing import Any

from PIL import Image
from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import F

from datasets.models import Dataset
from workers.errors import JobError
from workers.inference import ask
from workers import protocol, storage
from workers.events import publish
from workers.models import JobStatus, Priority, Visibility
from workers.permissions import can_view
from workers.version import code_version
from workers.services import Placement, job_create, job_delete, job_enqueue, job_resume, time_limit_check

from .models import MODEL_KIND, Evaluation, Export, LrPolicy, Metric, Network, Snapshot, TrainedModel
from .networks import check_input, network_task
from .training.lr_policy import parse_steps
from .training.spec import TrainSpec

# The parameters a user sets (on the form, in the API, copied by clone). Validators on
# the model fields check each alone; `validate_params` checks them together.
PARAM_FIELDS = [
    "network", "custom_code", "base_model", "base_epoch",
    "solver", "epochs", "batch_size", "batch_accumulation", "learning_rate", "momentum", "weight_decay", "seed",
    "lr_policy", "lr_step_size", "lr_steps", "lr_gamma", "lr_power", "lr_warmup_epochs",
    "val_interval", "snapshot_interval", "early_stopping_patience",
    "crop_size", "mean_subtraction", "flip", "rotate90", "rotation", "scale_jitter", "hsv_jitter", "precision",
    "keep_snapshots",
]
CUSTOM_PERMISSION = "models_app.submit_custom_network"

log = logging.getLogger(__name__)


def can_submit_code(user: User | AnonymousUser) -> bool:
    return bool(user.is_authenticated and user.has_perm(CUSTOM_PERMISSION))


def input_size(dataset: Dataset, crop_size: int | None) -> tuple[int, int, int]:
    if crop_size:
        return dataset.channels, crop_size, crop_size
    return dataset.channels, dataset.image_height, dataset.image_width


def validate_params(user: User, dataset: Dataset, params: dict[str, Any]) -> dict[str, Any]:
    """Cross-field rules. Returns the params to store (a fine-tune takes its network from
    the base model); raises JobError naming the field."""
    params = dict(params)
    base: TrainedModel | None = params.get("base_model")
    if base is not None:
        epoch = params.get("base_epoch")
        snapshot = snapshot_for(base, epoch, field="base_epoch")
        params["base_epoch"] = snapshot.epoch
        params["network"], params["custom_code"] = base.network, base.custom_code
    network = params.get("network", Network.LENET)
    if network == Network.CUSTOM:
        if not can_submit_code(user):
            raise JobError(
                "Training custom network code needs the 'Can train networks from custom PyTorch code' permission; "
                "ask an admin, or pick a standard network.",
                field="custom_code" if base is None else "base_model",
            )
        if not params.get("custom_code", "").strip():
            raise JobError("Write the network code: a build(input_shape, num_classes) function.", field="custom_code")
    else:
        params["custom_code"] = ""
    crop = params.get("crop_size")
    if crop and crop > min(dataset.image_width, dataset.image_height):
        raise JobError(
            f"The crop size must fit in the dataset's {dataset.image_width}x{dataset.image_height} images.", field="crop_size"
        )
    shape = input_size(dataset, crop)
    if dataset.task != "classification" and int(params.get("batch_size") or 2) < 2 * int(params.get("devices") or 1):
        raise JobError(
            "Segmentation and detection networks normalise over the images of a batch: give each device at least "
            "two (a batch size of at least twice the number of devices).", field="batch_size",
        )
    if dataset.is_detection and crop:
        # Validation and inference see the centre crop: objects at the sides would be
        # scored as missed. Boxes do move with training's random crops (augment.train_boxes).
        raise JobError(
            "A crop size is not offered for detection: validation would cut off the objects near the sides. Resize "
            "the dataset instead; zoom (scale jitter), rotation, quarter turns and flips move the boxes with the image.",
            field="crop_size",
        )
    if network != Network.CUSTOM and network_task(network) != dataset.task:
        wanted = (f"a {dataset.task} network (its name says so)" if dataset.task != "classification"
                  else "a classification network")
        raise JobError(
            f"{Network(network).label} is for {network_task(network)}, and {dataset.job.name!r} is a {dataset.task} "
            f"dataset: pick {wanted}.", field="network",
        )
    if network != Network.CUSTOM:
        try:
            check_input(network, Network(network).label, shape)
        except ValueError as exc:
            raise JobError(f"{exc} Pick another network, or a crop size.", field="network") from None
    if params.get("rotate90") and shape[1] != shape[2]:
        raise JobError("Quarter turns need square inputs: use a square dataset or a crop size.", field="rotate90")
    if params.get("solver") == "nesterov" and not params.get("momentum", 0.9):
        raise JobError("Nesterov's method needs a momentum above 0 (0.9 is usual).", field="momentum")
    if params.get("lr_policy") == LrPolicy.MULTISTEP:
        try:
            if not parse_steps(params.get("lr_steps", "")):
                raise ValueError("Give at least one step, like 50,85 (percent of training).")
        except ValueError as exc:
            raise JobError(str(exc), field="lr_steps") from None
    return params


@transaction.atomic
def model_create(
    *,
    owner: User,
    name: str,
    dataset: Dataset,
    group: str = "",
    notes: str = "",
    placement: Placement | None = None,
    visibility: str = Visibility.TEAM,
    **params: Any,
) -> TrainedModel:
    if not can_view(owner, dataset):
        raise JobError("No such dataset: pick one of yours, your teams' or a public one.", field="dataset")
    base = params.get("base_model")
    if base is not None and not can_view(owner, base if isinstance(base, TrainedModel) else int(base)):
        raise JobError("No such model to fine-tune from.", field="base_model")
    if dataset.job.status in (JobStatus.ERROR, JobStatus.ABORTED):
        raise JobError(
            f"Dataset {dataset.job.name!r} did not build ({dataset.job.status}); pick another dataset or rebuild it.",
            field="dataset",
        )
    unknown = set(params) - set(PARAM_FIELDS)
    if unknown:
        raise JobError(f"Unknown parameters: {', '.join(sorted(unknown))}.")
    params = validate_params(owner, dataset, params)
    placement = placement or Placement()
    batch = params.get("batch_size") or TrainedModel._meta.get_field("batch_size").default
    if batch % placement.devices:
        raise JobError(
            f"The batch size is split over the devices: {batch} is not a multiple of {placement.devices}.", field="batch_size"
        )
    job = job_create(
        kind=MODEL_KIND, name=name, owner=owner, group=group, notes=notes, placement=placement, visibility=visibility
    )
    model = TrainedModel.objects.create(job=job, dataset=dataset, **params)
    if model.base_model is not None:
        # Copy the weights: the fine-tune keeps working if the base model is deleted.
        snapshot = snapshot_for(model.base_model, model.base_epoch)
        model.pretrained_file = "pretrained.pt"
        shutil.copyfile(storage.fetch(snapshot.path), model.directory / model.pretrained_file)
        storage.publish(model.directory / model.pretrained_file)  # read by the training host
        model.save(update_fields=["pretrained_file"])
    # Back of the queue; the scheduler places it when devices are free.
    job_enqueue(model.pk, from_=[JobStatus.INITIALIZED])
    return model


def model_clone_params(model: TrainedModel) -> dict[str, Any]:
    """What "Clone" prefills: every parameter, the dataset and a new name."""
    values = {f: getattr(model, f) for f in PARAM_FIELDS}
    values["base_model"] = model.base_model_id
    job = model.job
    placement = {
        "devices": job.devices_requested,
        "device_ids": list(job.requested_devices.values_list("pk", flat=True)),
        "priority": Priority(job.priority).name.lower(),
        "multi_host": job.multi_host,
        "time_limit_hours": job.time_limit_seconds / 3600.0 if job.time_limit_seconds else None,
        "preemptible": job.preemptible,
        "visibility": job.visibility,
    }
    return {"name": f"{job.name} (clone)", "dataset": model.dataset_id, "group": job.group, **values, **placement}


def model_rerun_exactly(owner: User, model: TrainedModel) -> TrainedModel:
    """A new model with every parameter of `model` (seed included), on the same dataset,
    asking for the same devices and priority: the same curves on the same CPU setup."""
    if model.imported:
        raise JobError("An imported model was not trained here: fine-tune it instead.")
    job = model.job
    placement = Placement(devices=job.devices_requested, device_ids=tuple(job.requested_devices.values_list("pk", flat=True)),
                          priority=job.priority if job.priority in Priority.for_users() or owner.is_staff else Priority.NORMAL,
                          multi_host=job.multi_host, preemptible=job.preemptible,
                          # The limit as this user may have it (the default now, or at most theirs).
                          time_limit_seconds=time_limit_check(owner, job.time_limit_seconds / 3600 if job.time_limit_seconds else None))
    return model_create(
        owner=owner, name=f"{job.name} (rerun)"[:200], dataset=model.dataset, group=job.group,
        notes=f"An exact rerun of model #{model.pk}.", placement=placement, visibility=job.visibility,
        **{f: getattr(model, f) for f in PARAM_FIELDS},
    )


def model_resume(model: TrainedModel) -> Snapshot:
    """Continue an aborted or failed run from its latest snapshot (see ModelTraining.prepare_resume)."""
    job_resume(model.job)
    snapshot = latest_snapshot(model)
    assert snapshot is not None  # prepare_resume refused a model without one
    return snapshot


def latest_snapshot(model: TrainedModel) -> Snapshot | None:
    return model.snapshots.order_by("-iteration", "-epoch").first()


def model_rewind(model_id: int) -> Snapshot | None:
    """Drop the points recorded after the latest snapshot (all of them without one): a
    resumed or requeued run records them again, so charts continue without duplicates."""
    snapshot = Snapshot.objects.filter(model_id=model_id).order_by("-iteration", "-epoch").first()
    points = Metric.objects.filter(model_id=model_id)
    (points.filter(iteration__gt=snapshot.iteration) if snapshot else points).delete()
    model_refresh_best(model_id)
    return snapshot


def model_apply_retention(model_id: int) -> int:
    """Delete the snapshots beyond the model's retention (the last N and the best by
    validation accuracy stay; so does any snapshot an evaluation or export is reading).
    Returns the bytes freed; the model keeps the running total."""
    model = TrainedModel.objects.select_related("job").get(pk=model_id)
    keep = model.keep_snapshots or settings.SNAPSHOT_KEEP_LAST
    if not keep:
        return 0
    snapshots = list(model.snapshots.order_by("-iteration", "-epoch"))
    if len(snapshots) <= keep:
        return 0
    kept = {s.pk for s in snapshots[:keep]}
    best = max((s for s in snapshots if s.val_accuracy is not None), key=lambda s: s.val_accuracy or 0.0, default=None)
    if best is not None:
        kept.add(best.pk)
    busy = set(Evaluation.objects.filter(model_id=model_id, job__status__in=JobStatus.active()).values_list("epoch", flat=True))
    busy |= set(Export.objects.filter(model_id=model_id, job__status__in=JobStatus.active()).values_list("epoch", flat=True))
    freed = 0
    for snapshot in snapshots:
        if snapshot.pk in kept or snapshot.epoch in busy:
            continue
        try:
            freed += snapshot.path.stat().st_size
            snapshot.path.unlink()
        except FileNotFoundError:
            pass
        try:
            storage.remove(snapshot.path)
        except Exception:  # noqa: BLE001 - the row goes anyway; a left-over object is only space
            log.exception("snapshot %s could not be removed from the artifact store", snapshot.path)
        snapshot.delete()
    if freed:
        TrainedModel.objects.filter(pk=model_id).update(snapshots_freed_bytes=F("snapshots_freed_bytes") + freed)
    return freed


def model_store_record(model_id: int, data: dict[str, Any]) -> None:
    """The first run's record; a resumed run adds what it ran with (it may be other code)."""
    with transaction.atomic():
        model = TrainedModel.objects.select_for_update().get(pk=model_id)
        if not model.record or not data.get("resumed_from_iteration"):
            model.record = data
        else:
            keep = ("python", "torch", "torchvision", "cuda", "cudnn", "host", "device", "code", "resumed_from_iteration")
            model.record = {**model.record, "resumes": [*model.record.get("resumes", []), {k: data.get(k) for k in keep}]}
        model.save(update_fields=["record"])


def model_refresh_best(model_id: int) -> None:
    """The best validation accuracy recorded and its epoch (the earliest, on ties)."""
    best = (
        Metric.objects.filter(model_id=model_id, name="val_accuracy").order_by("-value", "iteration").values_list("value", "epoch").first()
    )
    TrainedModel.objects.filter(pk=model_id).update(
        best_val_accuracy=best[0] if best else None, best_epoch=best[1] if best else None
    )


def model_train_spec(model: TrainedModel) -> TrainSpec:
    """What the training child is asked to do: every parameter of the model, its data,
    and where to resume or fine-tune from."""
    dataset = model.dataset
    params = {f: getattr(model, f) for f in PARAM_FIELDS if f not in ("base_model", "base_epoch", "keep_snapshots")}
    latest = latest_snapshot(model)
    return TrainSpec(
        **params,
        num_classes=dataset.num_classes,
        input_shape=(dataset.channels, dataset.image_height, dataset.image_width),
        task=dataset.task,
        train_db=str(dataset.split_path("train")),
        val_db=str(dataset.split_path("val")),
        train_labels_db=str(dataset.label_split_path("train")) if dataset.is_segmentation else "",
        val_labels_db=str(dataset.label_split_path("val")) if dataset.is_segmentation else "",
        train_objects=str(dataset.objects_path("train")) if dataset.is_detection else "",
        val_objects=str(dataset.objects_path("val")) if dataset.is_detection else "",
        mean_path=str(dataset.mean_path),
        output_dir=str(model.directory),
        num_workers=settings.TRAIN_LOADER_WORKERS,
        cache_bytes=settings.TRAIN_CACHE_BYTES,
        pretrained=str(model.directory / model.pretrained_file) if model.pretrained_file else "",
        pretrained_label=f"model {model.base_model_id}, epoch {model.base_epoch:g}" if model.base_epoch else "the base model",
        resume_from=str(latest.path) if latest is not None else "",  # a resumed run
        provenance={
            "code": code_version(),
            "dataset": {"id": dataset.pk, "name": dataset.job.name, "checksums": dataset.checksums,
                        "image": f"{dataset.image_width}x{dataset.image_height} {dataset.image_mode}, {dataset.resize_mode}",
                        "encoding": dataset.encoding, "counts": dataset.counts},
            "model": model.pk,
            "base_model": {"id": model.base_model_id, "epoch": model.base_epoch} if model.base_model_id else None,
        },
    )


def model_record_events(model_id: int, batch: list[protocol.Event]) -> None:
    """Store a batch of the child's events (training rows, validation and throughput
    metrics, snapshots, notices), then publish them live, after commit, as one message."""
    rows: list[Metric] = []
    snapshots: list[protocol.Snapshot] = []
    notices: list[str] = []
    summary: protocol.Summary | None = None
    next_snapshot_eta = None
    sent_at: float | None = None  # the newest point's emit time in the trainer

    def add(iteration: int, epoch: float, values: Mapping[str, Any]) -> None:
        for name, value in values.items():
            if value is not None:
                rows.append(Metric(model_id=model_id, name=name, iteration=iteration, epoch=epoch, value=value))

    for event in batch:
        if isinstance(event, protocol.TrainRows):
            for iteration, epoch, values in event.rows:
                add(iteration, epoch, values)
            sent_at = max(sent_at or 0.0, event.t or 0.0) or None
        elif isinstance(event, protocol.Metrics):
            add(event.iteration, event.epoch, event.values)
            sent_at = max(sent_at or 0.0, event.t or 0.0) or None
        elif isinstance(event, protocol.Snapshot):
            snapshots.append(event)
        elif isinstance(event, protocol.Notice):
            notices.append(event.message)
        elif isinstance(event, protocol.Progress):
            next_snapshot_eta = event.next_snapshot_eta
        elif isinstance(event, protocol.Summary):
            summary = event
        elif isinstance(event, protocol.Record):
            model_store_record(model_id, dict(event.data))
        elif isinstance(event, protocol.Telemetry):
            values = dict(event.values)
            rank, iteration, epoch = int(values.pop("rank", 0) or 0), values.pop("iteration", None), values.pop("epoch", None)
            if iteration is not None and epoch is not None:
                # One series per reading and rank ("gpu_util:r0"), charted beside the metrics.
                add(int(iteration), float(epoch), {f"{name}:r{rank}": value for name, value in values.items()})
    if summary is not None:
        TrainedModel.objects.filter(pk=model_id).update(timings=asdict(summary))
    if not rows and not snapshots and not notices:
        return
    with transaction.atomic():
        Metric.objects.bulk_create(rows, batch_size=2000)
        if any(m.name == "val_accuracy" for m in rows):
            model_refresh_best(model_id)
        for snap in snapshots:
            Snapshot.objects.update_or_create(
                model_id=model_id,
                epoch=snap.epoch,
                defaults={
                    "iteration": snap.iteration,
                    "filename": snap.filename,
                    "val_loss": snap.val_loss,
                    "val_accuracy": snap.val_accuracy,
                    "val_top5": snap.val_top5,
                },
            )
        if snapshots:
            model_apply_retention(model_id)
        if notices:
            model = TrainedModel.objects.select_for_update().get(pk=model_id)
            model.notices = [*model.notices, *notices]
            model.save(update_fields=["notices"])
        publish(
            model_id,
            {
                "type": "metrics",
                "points": [{"name": m.name, "iteration": m.iteration, "epoch": m.epoch, "value": m.value} for m in rows],
                "snapshots": [s.epoch for s in snapshots],
                "notices": notices,
                "next_snapshot_eta": next_snapshot_eta,
                "sent_at": sent_at,  # when the trainer sent the newest point (latency: bench/live_latency.py)
            },
        )


def model_delete(model: TrainedModel) -> None:
    """The model, its snapshots, its evaluations and exports (model_before_delete)."""
    job_delete(model.job)


def model_before_delete(model_id: int) -> None:
    """A model's evaluations and exports are jobs of their own: each goes with its files
    (a running one is aborted first) before the model does."""
    for evaluation in Evaluation.objects.filter(model_id=model_id).select_related("job"):
        job_delete(evaluation.job)
    for export in Export.objects.filter(model_id=model_id).select_related("job"):
        job_delete(export.job)


def snapshot_for(model: TrainedModel, epoch: float | None, *, field: str | None = None) -> Snapshot:
    """The snapshot of `epoch`, or the latest one."""
    snapshots = model.snapshots.all()
    if epoch is not None:
        snapshot = snapshots.filter(epoch__gt=epoch - 5e-5, epoch__lt=epoch + 5e-5).first()
    else:
        snapshot = snapshots.order_by("-iteration", "-epoch").first()
    if snapshot is None:
        if epoch is not None:
            raise JobError(f"Model {model.job.name!r} has no snapshot for epoch {epoch:g}.", field=field)
        raise JobError(f"Model {model.job.name!r} has no snapshot yet; wait for its first one.", field=field)
    return snapshot


def _check_image(data: bytes) -> None:
    """A file Pillow recognises as an image (its header and structure; the inference
    worker decodes it)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
        raise JobError(f"Could not classify this file: not a readable image ({exc}).", field="image") from None


def model_classify_upload(
    model: TrainedModel, epoch: float | None, upload: UploadedFile, *, views: bool = False
) -> dict[str, Any]:
    """Classify one uploaded image (the page and the API) with the snapshot of `epoch` or
    the latest, in the inference worker; with `views`, also what every layer did
    (models_app/network_views.py). Every failure is a JobError the user can act on."""
    limit = settings.MAX_UPLOAD_IMAGE_BYTES
    if upload.size is not None and upload.size > limit:
        raise JobError(f"The image is larger than {limit // (1024 * 1024)} MiB; upload a smaller one.", field="image")
    upload.seek(0)
    data = upload.read()
    _check_image(data)  # clear errors before the round trip
    snapshot_for(model, epoch, field="epoch")
    image = base64.b64encode(data).decode()
    return ask("models_app.classify_one", model_id=model.pk, epoch=epoch, image=image, views=views)
