"""Training as a kind of job: placed on devices by the scheduler (one rank per device),
`python -m models_app.training.train` as its child (settings.TRAINING_MODULE, which the
bench swaps), waiting for its dataset. Registered by ModelsAppConfig."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.urls import reverse

from datasets.models import Dataset
from workers.errors import JobError
from workers.kinds import Blocked, Kind
from workers import storage
from workers.protocol import Event, Metrics, Result
from workers.protocol import Snapshot as SnapshotEvent
from workers.models import Job, JobStatus

from .evaluations import evaluation_list, evaluation_remove_partial, evaluation_spec, evaluation_store_result
from .exports import export_list, export_remove_partial, export_spec, export_store_result, export_summary
from .models import EVALUATION_KIND, EXPORT_KIND, MODEL_KIND, Evaluation, Export, TrainedModel
from .selectors import model_estimate_seconds
from .services import (
    latest_snapshot,
    model_before_delete,
    model_record_events,
    model_rewind,
    model_train_spec,
    snapshot_for,
)
from .sweeps import sweep_on_trial_end, sweep_on_validation
from .training import CHILD_ENV


def _snapshot_inputs(run: Evaluation | Export) -> list[Path]:
    """An evaluation's or an export's inputs: the model's dataset and its snapshot's file."""
    return [run.model.dataset.directory, snapshot_for(run.model, run.epoch).path]


class ModelTraining(Kind):
    name = MODEL_KIND
    label = "model"
    uses_devices = True
    stoppable = True  # the trainer snapshots and stops on SIGUSR1 (time limits, preemption)

    def child_module(self) -> str:
        return settings.TRAINING_MODULE

    def spec(self, job: Job) -> dict[str, Any]:
        return model_train_spec(TrainedModel.objects.select_related("dataset").get(pk=job.pk)).to_dict()

    def env(self, job: Job) -> dict[str, str]:
        return dict(CHILD_ENV)

    def preload_env(self) -> dict[str, str]:
        return dict(CHILD_ENV)

    def inputs(self, job: Job) -> list[Path]:
        # Its dataset, and its own folder: the snapshots of an earlier attempt to resume from.
        model = TrainedModel.objects.select_related("dataset__job").get(pk=job.pk)
        return [model.dataset.directory, job.directory]

    def apply(self, job_id: int, events: list[Event]) -> None:
        for event in events:  # each snapshot reaches the store as soon as it is written
            if isinstance(event, SnapshotEvent):  # after commit, in a thread: no row lock waits on it
                storage.publish_later(Job(pk=job_id).directory / event.filename)
        model_record_events(job_id, events)
        validations: dict[str, list[tuple[float, float]]] = {}
        for event in events:
            if isinstance(event, Metrics):
                for name in ("val_accuracy", "val_loss"):
                    value = event.values.get(name)
                    if value is not None:
                        validations.setdefault(name, []).append((event.epoch, float(value)))
        if validations:  # a trial of a sweep may be pruned here
            sweep_on_validation(job_id, validations)

    def complete(self, job: Job) -> str:
        sweep_on_trial_end(job.pk, JobStatus.DONE)
        return ""

    def cleanup(self, job: Job) -> None:
        row = Job.objects.filter(pk=job.pk).values_list("status", "error").first()
        if row is None:  # deleted while it ran: its trial, if any, went with its model
            return
        status, error = row
        sweep_on_trial_end(job.pk, status if status in JobStatus.finished() else JobStatus.ERROR, error)

    def blocked(self, job_ids: QuerySet[Any]) -> dict[int, Blocked]:
        """Models whose dataset is not built yet wait (taking no device); those whose
        dataset failed can never start."""
        waiting = Dataset.objects.filter(models__pk__in=job_ids).exclude(job__status=JobStatus.DONE)
        rows = waiting.values_list("models__pk", "job__name", "job__status", "job__error")
        blocked = {}
        for model_id, name, status, error in rows:
            if status in (JobStatus.ERROR, JobStatus.ABORTED):
                blocked[model_id] = Blocked(f"Dataset {name!r} did not build ({status}): {error}", fail=True)
            else:
                blocked[model_id] = Blocked(
                    f"Waiting for dataset {name!r} to finish building; training starts as soon as it is done."
                )
        return blocked

    def page_url(self, job: Job) -> str:
        return reverse("model_detail", args=[job.pk])

    def estimate_seconds(self, job_ids: list[int]) -> dict[int, float]:
        return model_estimate_seconds(job_ids)

    def before_delete(self, job: Job) -> None:
        model_before_delete(job.pk)

    def rewind(self, job_id: int) -> str:
        snapshot = model_rewind(job_id)
        if snapshot is None:
            return "Requeued to start again: it had no snapshot yet."
        return f"Requeued to resume from the snapshot at epoch {snapshot.epoch:g}."

    def prepare_resume(self, job: Job) -> str:
        model = TrainedModel.objects.get(pk=job.pk)
        if latest_snapshot(model) is None:
            raise JobError("This model has no snapshot to resume from; clone it to train again from the start.")
        snapshot = model_rewind(job.pk)
        assert snapshot is not None
        return f"Resumed from the snapshot at epoch {snapshot.epoch:g}."


class ModelEvaluation(Kind):
    """A snapshot over a dataset split (models_app/evaluate.py). No device: it runs on the
    CPU of the device-less worker, beside dataset builds, so it never waits behind
    training and works while every GPU is busy."""

    name = EVALUATION_KIND
    label = "evaluation"
    uses_devices = False
    queue = "datasets"
    module = "models_app.evaluate"

    def inputs(self, job: Job) -> list[Path]:
        # and its own folder: the images and lists uploaded to classify
        return [*_snapshot_inputs(evaluation_list().get(pk=job.pk)), job.directory]

    def spec(self, job: Job) -> dict[str, Any]:
        return evaluation_spec(evaluation_list().get(pk=job.pk)).to_dict()

    def env(self, job: Job) -> dict[str, str]:
        return {**CHILD_ENV, "CUDA_VISIBLE_DEVICES": ""}

    def apply(self, job_id: int, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Result):
                evaluation_store_result(job_id, event.data)

    def complete(self, job: Job) -> str:
        metrics = Evaluation.objects.get(pk=job.pk).metrics
        if not metrics:
            raise JobError("The evaluation ended without reporting its metrics; see the log.")
        if metrics.get("task") == "segmentation":
            return (f"Mean IoU {metrics['miou']:.2%}, pixel accuracy {metrics['pixel_accuracy']:.2%} on "
                    f"{metrics['images']} images.")
        if metrics.get("task") == "detection":
            return (f"mAP@0.5 {metrics['map50']:.2%}, mAP@0.5:0.95 {metrics['map']:.2%} on {metrics['images']} images: "
                    f"{metrics['found']} objects found, {metrics['missed']} missed, {metrics['false_alarms']} false alarms.")
        problems = metrics.get("problem_count", 0)
        noted = f"; {problems} line(s) or file(s) not used or without ground truth, listed on its page" if problems else ""
        if metrics["top1"] is None:
            return f"Classified {metrics['images']} images (none with ground truth){noted}."
        return (
            f"Top-1 {metrics['top1']:.2%}, top-5 {metrics['top5']:.2%} on {metrics['labeled']} images with ground truth "
            f"of {metrics['images']}{noted}."
            if metrics.get("labeled", metrics["images"]) != metrics["images"]
            else f"Top-1 {metrics['top1']:.2%}, top-5 {metrics['top5']:.2%} on {metrics['images']} images{noted}."
        )

    def page_url(self, job: Job) -> str:
        return reverse("evaluation_detail", args=[job.pk])

    def cleanup(self, job: Job) -> None:
        evaluation_remove_partial(job.pk)

    def rewind(self, job_id: int) -> str:
        evaluation_remove_partial(job_id)
        return "Evaluating again from the start."


class ModelExport(Kind):
    """A snapshot exported to ONNX and torch.export and checked against PyTorch
    (models_app/export_verify.py). No device, like an evaluation."""

    name = EXPORT_KIND
    label = "export"
    uses_devices = False
    queue = "datasets"
    module = "models_app.export_verify"

    def inputs(self, job: Job) -> list[Path]:
        return _snapshot_inputs(export_list().get(pk=job.pk))

    def spec(self, job: Job) -> dict[str, Any]:
        return export_spec(export_list().get(pk=job.pk)).to_dict()

    def env(self, job: Job) -> dict[str, str]:
        return {**CHILD_ENV, "CUDA_VISIBLE_DEVICES": ""}

    def apply(self, job_id: int, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Result):
                export_store_result(job_id, event.data)

    def complete(self, job: Job) -> str:
        results = Export.objects.get(pk=job.pk).results
        if not results:
            raise JobError("The export ended without reporting its checks; see the log.")
        return export_summary(results)

    def page_url(self, job: Job) -> str:
        model_id = Export.objects.filter(pk=job.pk).values_list("model_id", flat=True).first()
        return reverse("model_detail", args=[model_id]) + "#exports" if model_id else reverse("job_log", args=[job.pk])

    def cleanup(self, job: Job) -> None:
        export_remove_partial(job.pk)

    def rewind(self, job_id: int) -> str:
        export_remove_partial(job_id)
        return "Exporting again from the start."
