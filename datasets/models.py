"""Image classification datasets. Each dataset is a job (shared primary key)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from django.db import models

from workers.models import Job


class ImageMode(models.TextChoices):
    COLOR = "color", "Color (3 channels)"
    GRAYSCALE = "grayscale", "Grayscale (1 channel)"


class ResizeMode(models.TextChoices):
    SQUASH = "squash", "Squash (stretch to size)"
    CROP = "crop", "Crop (keep aspect, centre-crop)"
    FILL = "fill", "Fill (keep aspect, pad with noise)"
    HALF_CROP = "half_crop", "Half crop, half fill"


class Dataset(models.Model):
    job = models.OneToOneField(Job, on_delete=models.CASCADE, primary_key=True, related_name="dataset")
    folder = models.CharField(max_length=1000, help_text="Server folder with one subfolder per class.")
    image_width = models.PositiveIntegerField(default=28)
    image_height = models.PositiveIntegerField(default=28)
    image_mode = models.CharField(max_length=16, choices=ImageMode.choices, default=ImageMode.COLOR)
    resize_mode = models.CharField(max_length=16, choices=ResizeMode.choices, default=ResizeMode.SQUASH)
    val_percent = models.FloatField(default=25.0)
    seed = models.IntegerField(default=0)
    # Filled in when the build finishes.
    labels = models.JSONField(default=list, blank=True)
    counts = models.JSONField(default=dict, blank=True)  # {"train": n, "val": n}
    class_counts = models.JSONField(default=dict, blank=True)  # {"train": [n per class], ...}
    skipped = models.JSONField(default=list, blank=True)  # [{"path", "reason"}]
    mean_pixel = models.JSONField(default=list, blank=True)

    def __str__(self) -> str:
        return self.job.name

    @property
    def channels(self) -> int:
        return 3 if self.image_mode == ImageMode.COLOR else 1

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def directory(self) -> Path:
        return self.job.directory

    def split_path(self, split: str) -> Path:
        return self.directory / f"{split}_db"

    @property
    def mean_path(self) -> Path:
        return self.directory / "mean.npy"

    def load_mean(self) -> np.ndarray:
        return np.load(self.mean_path)

    def class_count_rows(self) -> list[tuple[str, list[int]]]:
        """(label, [count per split]) for the dataset page's table and chart."""
        splits = list(self.class_counts)
        return [(label, [self.class_counts[s][i] for s in splits]) for i, label in enumerate(self.labels)]
