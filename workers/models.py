"""Jobs: the lifecycle shared by every dataset build and training run.

A Job row is the source of truth for status; the websocket only pushes what is stored here.
What a job computes is its kind's business (workers/kinds.py): each app keeps its own
parameters in a row that shares the job's primary key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import models

from . import kinds


class JobStatus(models.TextChoices):
    INITIALIZED = "initialized", "Initialized"
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    ABORTED = "aborted", "Aborted"
    ERROR = "error", "Error"
    # Stopped at its time limit, with a snapshot: resumable.
    TIMED_OUT = "timed_out", "Timed out"

    @classmethod
    def active(cls) -> list[str]:
        return [cls.INITIALIZED, cls.QUEUED, cls.RUNNING]

    @classmethod
    def finished(cls) -> list[str]:
        return [cls.DONE, cls.ABORTED, cls.ERROR, cls.TIMED_OUT]

    @classmethod
    def resumable(cls) -> list[str]:
        return [cls.ABORTED, cls.ERROR, cls.TIMED_OUT]


class StopReason(models.TextChoices):
    """Why a running job is asked to stop gracefully: snapshot at its next step, then exit
    (workers/runner.py signals the child; the kind's child must honour SIGUSR1)."""

    NONE = "", "—"
    TIMEOUT = "timeout", "Its time limit"
    PREEMPT = "preempt", "Preempted"


class Visibility(models.TextChoices):
    """Who may see a job (and its dataset or model): the owner and admins always."""

    PRIVATE = "private", "Only me"
    TEAM = "team", "My teams"  # an owner in no team shares with everyone, as before teams existed
    PUBLIC = "public", "Everyone"


class Priority(models.IntegerChoices):
    """Queue priority: higher first, first come first served within one. Users pick low or
    normal; admins may set any."""

    LOW = 0, "Low"
    NORMAL = 10, "Normal"
    HIGH = 20, "High"
    URGENT = 30, "Urgent"

    @classmethod
    def for_users(cls) -> list[int]:
        return [cls.LOW, cls.NORMAL]


class Job(models.Model):
    # The name of a registered kind (workers/kinds.py): "dataset", "model", ...
    kind = models.CharField(max_length=16)
    name = models.CharField(max_length=200)
    # Free-form: the console groups jobs by it (a project, an experiment series).
    group = models.CharField(max_length=100, blank=True, default="")
    notes = models.TextField(blank=True, default="")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs")
    visibility = models.CharField(max_length=8, choices=Visibility.choices, default=Visibility.TEAM)
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.INITIALIZED)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # 0..1, and the estimated seconds left, both reported by the running child process.
    progress = models.FloatField(default=0.0)
    eta_seconds = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)

    # Scheduling (training jobs): see workers/scheduler.py.
    priority = models.IntegerField(choices=Priority.choices, default=Priority.NORMAL)
    # FIFO within a priority: the enqueue time, which an admin's reorder rewrites.
    queue_position = models.FloatField(default=0.0)
    queued_at = models.DateTimeField(null=True, blank=True)
    held = models.BooleanField(default=False, help_text="Held by an admin: stays queued and is not started.")
    devices_requested = models.PositiveSmallIntegerField(default=1)
    # Specific devices (all of them, at once); empty: any free ones.
    requested_devices: models.ManyToManyField[Device, Any] = models.ManyToManyField(
        "Device", blank=True, related_name="requested_by"
    )
    multi_host = models.BooleanField(default=False, help_text="May the ranks be spread over several hosts?")
    # Wall-time limit of one run (from its start or resume); None: no limit.
    time_limit_seconds = models.FloatField(null=True, blank=True)
    preemptible = models.BooleanField(
        default=False, help_text="May a higher-priority job take its devices? It is stopped with a snapshot and resumes by itself."
    )
    # A graceful stop asked of the current run, and since when (the grace period counts from it).
    stop_request = models.CharField(max_length=16, choices=StopReason.choices, blank=True, default=StopReason.NONE)
    stop_requested_at = models.DateTimeField(null=True, blank=True)
    stop_note = models.CharField(max_length=300, blank=True, default="")  # who preempted it
    # The queued job a preemption makes room for: while its victims stop, nothing smaller
    # takes the devices they free (no backfill past it).
    preempted_for = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="preempting")
    # Each dispatch is a new attempt; ranks of an older attempt stop and are ignored.
    attempt = models.PositiveIntegerField(default=0)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    # host:port where rank 0 of the current attempt listens for the others.
    rendezvous = models.CharField(max_length=200, blank=True, default="")
    # Automatic requeues after a lost worker; bounded so a broken job cannot loop forever.
    interruptions = models.PositiveIntegerField(default=0)
    # After a gang start that failed (its ranks did not all start), it is not placed again
    # before this time: a backoff, so a bad device or host is not retried in a tight loop.
    not_before = models.DateTimeField(null=True, blank=True)
    # The process running a device-less job (a dataset build), so a redelivered task can
    # tell a live run from one whose process was killed.
    runner_host = models.CharField(max_length=200, blank=True, default="")
    runner_pid = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["status", "kind"]),
            models.Index(fields=["-priority", "queue_position", "id"], name="job_queue_order"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.pk} {self.name!r} ({self.status})"

    @property
    def kind_label(self) -> str:
        """"Dataset", "Model": what the pages call this kind of job."""
        try:
            return (kinds.get(self.kind).label or self.kind).capitalize()
        except kinds.UnknownKind:
            return self.kind

    @property
    def page_url(self) -> str:
        """Its page, wherever its kind keeps it."""
        try:
            return kinds.get(self.kind).page_url(self)
        except kinds.UnknownKind:
            return ""

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


class DeviceKind(models.TextChoices):
    GPU = "gpu", "GPU"
    CPU = "cpu", "CPU"


class Device(models.Model):
    """A GPU (or a CPU "device" on a host without GPUs) offered by one pinned Celery worker,
    which registers it at start-up and heartbeats its stats every few seconds."""

    uuid = models.CharField(max_length=100, unique=True)  # NVML's UUID, or cpu-<host>-<index>
    host = models.CharField(max_length=200)
    # Where ranks on other hosts reach this host (torch.distributed rendezvous).
    address = models.CharField(max_length=200)
    kind = models.CharField(max_length=8, choices=DeviceKind.choices)
    index = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=200)
    memory_total = models.BigIntegerField(default=0)  # bytes
    worker = models.CharField(max_length=200, blank=True)  # the Celery node name
    # Disabled: drained. A running job finishes; no new job starts on it.
    enabled = models.BooleanField(default=True)
    registered_at = models.DateTimeField(auto_now_add=True)
    last_seen = models.DateTimeField(null=True, blank=True)
    stats = models.JSONField(default=dict, blank=True)  # the last heartbeat's stats

    class Meta:
        ordering = ["host", "kind", "index"]

    def __str__(self) -> str:
        return self.label

    @property
    def label(self) -> str:
        return f"{self.host}/{self.kind}{self.index}"

    @property
    def queue(self) -> str:
        """The Celery queue only this device's worker consumes."""
        return device_queue(self.uuid)

    @property
    def online(self) -> bool:
        from django.utils import timezone

        return bool(self.last_seen and (timezone.now() - self.last_seen).total_seconds() < settings.DEVICE_DEAD_SECONDS)


def device_queue(uuid: str) -> str:
    return f"device.{uuid}"


class AllocationOutcome(models.TextChoices):
    DONE = "done", "Done"
    ERROR = "error", "Error"
    ABORTED = "aborted", "Aborted"
    INTERRUPTED = "interrupted", "Interrupted"  # requeued to resume elsewhere
    LOST = "lost", "Worker lost"
    PREEMPTED = "preempted", "Preempted"  # stopped with a snapshot for a higher-priority job
    TIMED_OUT = "timed_out", "Timed out"
    SKIPPED = "skipped", "Not started"  # the job changed before the rank began


class Allocation(models.Model):
    """One rank of one attempt of a job on one device. Active while released_at is empty;
    the database refuses a second active allocation of a device. Kept afterwards as the
    usage history (who ran what, where, for how long)."""

    job = models.ForeignKey(Job, null=True, on_delete=models.SET_NULL, related_name="allocations")
    job_name = models.CharField(max_length=200)  # kept when the job is deleted
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="allocations")
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="allocations")
    attempt = models.PositiveIntegerField()
    rank = models.PositiveSmallIntegerField()
    world_size = models.PositiveSmallIntegerField()
    allocated_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)  # claimed by the device's worker
    pid = models.PositiveIntegerField(null=True, blank=True)  # the worker process running this rank
    released_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=AllocationOutcome.choices, blank=True)
    # Counted in its owner's fair-share usage (workers/fairshare.py) once released.
    charged = models.BooleanField(default=False)

    class Meta:
        ordering = ["-allocated_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["device"], condition=models.Q(released_at__isnull=True), name="one_active_allocation_per_device"
            ),
            models.UniqueConstraint(fields=["job", "attempt", "rank"], name="one_allocation_per_rank"),
        ]
        # What fair share reads on every pass: the allocations not yet folded into usage.
        indexes = [models.Index(fields=["owner"], condition=models.Q(charged=False), name="allocation_uncharged")]

    @property
    def seconds(self) -> float:
        from django.utils import timezone

        if not self.started_at:
            return 0.0
        return ((self.released_at or timezone.now()) - self.started_at).total_seconds()


class DeviceLimit(models.Model):
    """An admin's per-user override of DIGITS_USER_DEVICE_LIMIT and
    DIGITS_USER_DEVICE_HOURS_PER_WEEK (0: no limit)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="device_limit")
    # None: the site's default (for each of the two).
    max_devices = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Devices this user's jobs may hold at once; 0: no limit; empty: the default."
    )
    # A run's time limit when the user's job sets none, and the most it may set (None: the site's).
    max_job_hours = models.FloatField(null=True, blank=True, help_text="Longest run of one job, in hours; 0: no limit; empty: the default.")
    max_device_hours_per_week = models.FloatField(
        null=True, blank=True, help_text="Device-hours this user's jobs may use in any 7 days; 0: no limit; empty: the default."
    )

    def __str__(self) -> str:
        devices = "default" if self.max_devices is None else self.max_devices or "no limit"
        hours = "default" if self.max_device_hours_per_week is None else self.max_device_hours_per_week or "no limit"
        return f"{self.user}: {devices} devices, {hours} device-hours a week"


class TeamLimit(models.Model):
    """A team's (a Django group's) quota: what all its members' jobs together may hold at
    once and use in any 7 days (0: no limit)."""

    team = models.OneToOneField("auth.Group", on_delete=models.CASCADE, related_name="device_limit")
    max_devices = models.PositiveSmallIntegerField(default=0, help_text="Devices the team's jobs may hold at once; 0: no limit.")
    max_device_hours_per_week = models.FloatField(default=0, help_text="Device-hours the team may use in any 7 days; 0: no limit.")

    def __str__(self) -> str:
        return f"{self.team}: {self.max_devices or 'any'} devices, {self.max_device_hours_per_week or 'unlimited'} h/week"


class FairShareUsage(models.Model):
    """A user's decayed device-seconds as of `at` (see workers/fairshare.py)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="fair_share_usage")
    device_seconds = models.FloatField(default=0.0)
    at = models.DateTimeField()


class AuditEntry(models.Model):
    """Who did what, when: every destructive action (delete, abort, bulk actions) and every
    admin action (the queue, devices, limits and quotas, the Django admin), recorded by
    workers/audit.py for the pages and the API alike. Kept when the user or object goes."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    username = models.CharField(max_length=150)
    action = models.CharField(max_length=100)
    target = models.CharField(max_length=300, blank=True)
    method = models.CharField(max_length=8)
    path = models.CharField(max_length=500)
    status = models.PositiveSmallIntegerField()  # the response: 2xx/3xx done, 4xx refused
    address = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.username}: {self.action} {self.target} ({self.status})"


class TeamAdmin(models.Model):
    """A team's admin: may change (abort, delete, edit) the jobs of the team's members."""

    team = models.ForeignKey("auth.Group", on_delete=models.CASCADE, related_name="admins")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="team_admin_of")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "user"], name="one_admin_row_per_team_user")]

    def __str__(self) -> str:
        return f"{self.user} administers {self.team}"
