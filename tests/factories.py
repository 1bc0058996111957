"""Rows made straight through the ORM, for tests that need no worker."""
from __future__ import annotations

from datasets.models import Dataset
from models_app.models import Metric, Snapshot, TrainedModel
from workers.models import Job, JobEvent, JobStatus


def make_dataset(owner, name: str = "ds", status: str = JobStatus.DONE) -> Dataset:
    job = Job.objects.create(kind="dataset", name=name, owner=owner, status=status)
    JobEvent.objects.create(job=job, status=status)
    job.directory.mkdir(parents=True, exist_ok=True)
    return Dataset.objects.create(
        job=job, folder="/nowhere", labels=["a", "b"], counts={"train": 8, "val": 2},
        class_counts={"train": [4, 4], "val": [1, 1]},
    )


def make_model(owner, dataset: Dataset, name: str = "m", status: str = JobStatus.DONE, epochs: int = 2) -> TrainedModel:
    job = Job.objects.create(kind="model", name=name, owner=owner, status=status)
    JobEvent.objects.create(job=job, status=status)
    job.directory.mkdir(parents=True, exist_ok=True)
    model = TrainedModel.objects.create(job=job, dataset=dataset, epochs=epochs)
    for i in range(1, 11):
        Metric.objects.create(model=model, name="train_loss", iteration=i, epoch=i / 5, value=2.0 / i)
    for e in range(1, epochs + 1):
        Metric.objects.create(model=model, name="val_accuracy", iteration=e * 5, epoch=e, value=0.5 + e / 10)
        Snapshot.objects.create(model=model, epoch=e, filename=f"snapshot_epoch_{e}.pt", val_accuracy=0.5 + e / 10, val_loss=1.0)
    return model
