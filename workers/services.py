"""Job lifecycle services: every status change goes through `job_transition`."""
from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable

from django.db import transaction
from django.utils import timezone

from .events import publish
from .models import Job, JobEvent, JobKind, JobStatus

log = logging.getLogger(__name__)


class JobError(Exception):
    """A user-facing problem with a job request; the message says what to do. `field`
    names the form field it belongs to, when there is one."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def job_create(*, kind: JobKind, name: str, owner, group: str = "", notes: str = "") -> Job:  # noqa: ANN001
    job = Job.objects.create(kind=kind, name=name, owner=owner, group=group.strip(), notes=notes)
    JobEvent.objects.create(job=job, status=JobStatus.INITIALIZED)
    job.directory.mkdir(parents=True, exist_ok=True)
    return job


def job_transition(
    job_id: int,
    to: JobStatus,
    *,
    from_: Iterable[str] | None = None,
    message: str = "",
) -> bool:
    """Atomically move a job to `to` if it is currently in one of `from_`.

    Returns False when the job was not in an allowed state (e.g. a redelivered task whose
    job already runs, or an abort racing with completion) — callers treat that as "someone
    else got there first" and do nothing.
    """
    allowed = list(from_) if from_ is not None else [s for s in JobStatus.values if s != to]
    now = timezone.now()
    fields: dict[str, object] = {"status": to}
    if to == JobStatus.RUNNING:
        fields.update(started_at=now, finished_at=None, error="")
    if to in JobStatus.finished():
        fields["finished_at"] = now
        fields["eta_seconds"] = None
    if to == JobStatus.ERROR:
        fields["error"] = message
    if to == JobStatus.DONE:
        fields["progress"] = 1.0
    with transaction.atomic():
        updated = Job.objects.filter(pk=job_id, status__in=allowed).update(**fields)
        if not updated:
            return False
        JobEvent.objects.create(job_id=job_id, status=to, message=message)
        publish(job_id, {"type": "status", "status": str(to), "message": message}, broadcast=True)
    return True


def job_claim(job_id: int) -> bool:
    """Claim a queued job for running; a redelivered task that loses the claim must exit."""
    return job_transition(job_id, JobStatus.RUNNING, from_=[JobStatus.QUEUED])


def job_fail(job_id: int, message: str) -> bool:
    return job_transition(job_id, JobStatus.ERROR, from_=JobStatus.active(), message=message)


def job_abort(job: Job) -> None:
    if not job.is_active:
        raise JobError(f"This job is already {job.get_status_display().lower()}; there is nothing to abort.")
    job_transition(job.pk, JobStatus.ABORTED, from_=JobStatus.active(), message="Aborted by the user.")


def job_set_progress(job_id: int, progress: float, eta_seconds: float | None) -> None:
    Job.objects.filter(pk=job_id).update(progress=progress, eta_seconds=eta_seconds)
    publish(job_id, {"type": "progress", "progress": progress, "eta": eta_seconds})


def job_update(job: Job, *, name: str | None = None, group: str | None = None, notes: str | None = None) -> Job:
    """Edit what a person may change at any time: the name, the group and the notes."""
    if name is not None:
        if not name.strip():
            raise JobError("The name cannot be empty.", field="name")
        job.name = name.strip()[:200]
    if group is not None:
        job.group = group.strip()[:100]
    if notes is not None:
        job.notes = notes
    job.save(update_fields=["name", "group", "notes"])
    publish(job.pk, {"type": "updated", "name": job.name, "group": job.group}, broadcast=True)
    return job


def job_delete(job: Job) -> None:
    """Delete a job's rows and files. A running job is aborted first so its process ends."""
    if job.is_active:
        job_transition(job.pk, JobStatus.ABORTED, from_=JobStatus.active(), message="Deleted by the user.")
    job_id = job.pk
    directory = job.directory
    with transaction.atomic():
        job.delete()
        publish(job_id, {"type": "deleted"}, broadcast=True)
    # Files go after the rows are gone, so a reader never sees a row without its files.
    shutil.rmtree(directory, ignore_errors=True)
