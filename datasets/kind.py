"""The dataset build as a kind of job: no device, its own Celery queue (builds never wait
behind training), `python -m datasets.build` as its child. Registered by DatasetsConfig."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from django.urls import reverse

from workers.errors import JobError
from workers.kinds import Kind
from workers.protocol import Event, Result
from workers.models import Job

from .models import DATASET_KIND, Dataset
from .services import (
    dataset_before_delete,
    dataset_build_environment,
    dataset_build_spec,
    dataset_remove_partial,
    dataset_store_result,
)


class DatasetBuild(Kind):
    name = DATASET_KIND
    label = "dataset"
    uses_devices = False
    queue = "datasets"
    module = "datasets.build"

    def spec(self, job: Job) -> dict[str, Any]:
        return dataset_build_spec(Dataset.objects.get(pk=job.pk)).to_dict()

    def inputs(self, job: Job) -> list[Path]:
        return [job.directory]  # uploaded lists, when the web host is another

    def env(self, job: Job) -> dict[str, str]:
        return dataset_build_environment(Dataset.objects.select_related("s3_credential").get(pk=job.pk))

    def apply(self, job_id: int, events: list[Event]) -> None:
        # The child reports its result once, as its last event; store it with the row.
        for event in events:
            if isinstance(event, Result):
                dataset = Dataset.objects.filter(pk=job_id).first()
                if dataset is not None:
                    dataset_store_result(dataset, event.data)

    def complete(self, job: Job) -> str:
        dataset = Dataset.objects.get(pk=job.pk)
        if not dataset.counts:
            raise JobError("The build ended without reporting a result; see the log.")
        skipped, dropped = len(dataset.skipped), len(dataset.dropped_classes)
        notes = []
        if skipped:
            notes.append(f"{skipped} file(s) skipped")
        if dropped:
            notes.append(f"{dropped} class(es) dropped below the minimum per class")
        return "; ".join(notes) + "; see the report on the dataset page." if notes else ""

    def cleanup(self, job: Job) -> None:
        dataset = Dataset.objects.filter(pk=job.pk).first()
        if dataset is not None:
            dataset_remove_partial(dataset)

    def page_url(self, job: Job) -> str:
        return reverse("dataset_detail", args=[job.pk])

    def before_delete(self, job: Job) -> None:
        dataset = Dataset.objects.filter(pk=job.pk).select_related("upload").first()
        if dataset is not None:
            dataset_before_delete(dataset)

    def rewind(self, job_id: int) -> str:
        self.cleanup(Job(pk=job_id))
        return "Building again from the start."
