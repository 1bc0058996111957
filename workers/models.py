"""Jobs: the lifecycle shared by every dataset build and training run.

A Job row is the source of truth for status; the websocket only pushes what is stored here.
Domain parameters live in `datasets.Dataset` and `models_app.TrainedModel`, which share the
job's primary key.
"""
from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import models


class JobStatus(models.TextChoices):
    INITIALIZED = "initialized", "Initialized"
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    ABORTED = "aborted", "Aborted"
    ERROR = "error", "Error"

    @classmethod
    def active(cls) -> list[str]:
        return [cls.INITIALIZED, cls.QUEUED, cls.RUNNING]

    @classmethod
    def finished(cls) -> list[str]:
        return [cls.DONE, cls.ABORTED, cls.ERROR]


class JobKind(models.TextChoices):
    DATASET = "dataset", "Dataset"
    MODEL = "model", "Model"


class Job(models.Model):
    kind = models.CharField(max_length=16, choices=JobKind.choices)
    name = models.CharField(max_length=200)
    # Free-form: the console groups jobs by it (a project, an experiment series).
    group = models.CharField(max_length=100, blank=True, default="")
    notes = models.TextField(blank=True, default="")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs")
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.INITIALIZED)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # 0..1, and the estimated seconds left, both reported by the running child process.
    progress = models.FloatField(default=0.0)
    eta_seconds = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "kind"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.pk} {self.name!r} ({self.status})"

    @property
    def directory(self) -> Path:
        return Path(settings.JOBS_DIR) / str(self.pk)

    @property
    def log_path(self) -> Path:
        return self.directory / "job.log"

    @property
    def is_active(self) -> bool:
        return self.status in JobStatus.active()

    @property
    def duration_seconds(self) -> float | None:
        if not self.started_at:
            return None
        from django.utils import timezone

        end = self.finished_at or timezone.now()
        return (end - self.started_at).total_seconds()

    def can_modify(self, user) -> bool:  # noqa: ANN001 - a User or AnonymousUser
        """Owners modify their own jobs; staff may modify any. Everyone logged in may view."""
        return bool(user.is_authenticated and (user.pk == self.owner_id or user.is_staff))

    def log_tail(self, lines: int = 40) -> str:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(0, 2)
                size = fh.tell()
                fh.seek(max(0, size - 64 * 1024))
                text = fh.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class JobEvent(models.Model):
    """One entry of a job's status timeline."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    status = models.CharField(max_length=16, choices=JobStatus.choices)
    at = models.DateTimeField(auto_now_add=True)
    message = models.TextField(blank=True)

    class Meta:
        ordering = ["at", "id"]
