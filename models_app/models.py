"""Image classification models (training runs), their metrics and snapshots."""
from __future__ import annotations

from pathlib import Path

from django.db import models

from datasets.models import Dataset
from workers.models import Job


class Network(models.TextChoices):
    LENET = "lenet", "LeNet (28x28)"


class Solver(models.TextChoices):
    SGD = "sgd", "SGD (momentum)"


class TrainedModel(models.Model):
    job = models.OneToOneField(Job, on_delete=models.CASCADE, primary_key=True, related_name="model")
    # PROTECT: a dataset in use cannot be deleted from under its models.
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="models")
    network = models.CharField(max_length=32, choices=Network.choices, default=Network.LENET)
    solver = models.CharField(max_length=16, choices=Solver.choices, default=Solver.SGD)
    epochs = models.PositiveIntegerField(default=10)
    batch_size = models.PositiveIntegerField(default=64)
    learning_rate = models.FloatField(default=0.01)
    momentum = models.FloatField(default=0.9)
    weight_decay = models.FloatField(default=0.0)
    seed = models.IntegerField(default=0)

    def __str__(self) -> str:
        return self.job.name

    @property
    def directory(self) -> Path:
        return self.job.directory


class Metric(models.Model):
    """One point of a chart. `iteration` orders train points; `epoch` is fractional."""

    model = models.ForeignKey(TrainedModel, on_delete=models.CASCADE, related_name="metrics")
    name = models.CharField(max_length=32)  # train_loss, val_loss, val_accuracy, val_top5, lr
    iteration = models.PositiveIntegerField()
    epoch = models.FloatField()
    value = models.FloatField()

    class Meta:
        indexes = [models.Index(fields=["model", "name", "iteration"])]
        ordering = ["iteration", "id"]


class Snapshot(models.Model):
    model = models.ForeignKey(TrainedModel, on_delete=models.CASCADE, related_name="snapshots")
    epoch = models.PositiveIntegerField()
    filename = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    val_loss = models.FloatField(null=True, blank=True)
    val_accuracy = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["epoch"]
        constraints = [models.UniqueConstraint(fields=["model", "epoch"], name="unique_snapshot_epoch")]

    @property
    def path(self) -> Path:
        return self.model.directory / self.filename
