"""Job status changes: every one goes through `job_transition`, which records it on the
timeline and publishes it after commit. The lowest layer of the engine: the scheduler,
the runner and the services all build on it."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.utils import timezone

from .errors import JobError
from .events import publish
from .models import Job, JobEvent, JobStatus, StopReason

__all__ = ["JobError", "job_claim", "job_fail", "job_set_progress", "job_transition"]


def job_transition(
    job_id: int,
    to: JobStatus,
    *,
    from_: Iterable[str] | None = None,
    message: str = "",
    where: dict[str, Any] | None = None,
    also: dict[str, Any] | None = None,
) -> bool:
    """Atomically move a job to `to` if it is currently in one of `from_`.

    Returns False when the job was not in an allowed state (e.g. a redelivered task whose
    job already runs, or an abort racing with completion) — callers treat that as "someone
    else got there first" and do nothing. `where` adds conditions (an attempt number),
    `also` more fields to set in the same update.
    """
    allowed = list(from_) if from_ is not None else [s for s in JobStatus.values if s != to]
    now = timezone.now()
    fields: dict[str, object] = {"status": to}
    if to == JobStatus.RUNNING:
        fields.update(
            not_before=None, started_at=now, finished_at=None, error="", stop_request="", stop_requested_at=None,
            preempted_for=None, stop_note="",
        )
    if to in JobStatus.finished():
        fields.update(
            finished_at=now, eta_seconds=None, stop_request="", stop_requested_at=None, preempted_for=None, not_before=None
        )
    if to == JobStatus.ERROR:
        fields["error"] = message
    if to == JobStatus.DONE:
        fields["progress"] = 1.0
    if to == JobStatus.QUEUED:
        # (an interruption's backoff sets not_before again, in `also`)
        fields.update(
            queued_at=now, dispatched_at=None, rendezvous="", stop_request="", stop_requested_at=None, preempted_for=None,
            not_before=None,
        )
    fields.update(also or {})
    with transaction.atomic():
        updated = Job.objects.filter(pk=job_id, status__in=allowed, **(where or {})).update(**fields)
        if not updated:
            return False
        JobEvent.objects.create(job_id=job_id, status=to, message=message)
        publish(job_id, {"type": "status", "status": str(to), "message": message}, broadcast=True)
    return True


def job_claim(job_id: int, **kwargs: Any) -> bool:
    """Claim a queued job for running; a redelivered task that loses the claim must exit."""
    return job_transition(job_id, JobStatus.RUNNING, from_=[JobStatus.QUEUED], **kwargs)


def job_fail(job_id: int, message: str) -> bool:
    return job_transition(job_id, JobStatus.ERROR, from_=JobStatus.active(), message=message)


def job_set_progress(job_id: int, progress: float, eta_seconds: float | None) -> None:
    Job.objects.filter(pk=job_id).update(progress=progress, eta_seconds=eta_seconds)
    publish(job_id, {"type": "progress", "progress": progress, "eta": eta_seconds})


def job_request_stop(job: Job, reason: str, note: str = "", preempted_for: int | None = None) -> bool:
    """Ask the running job's current run to stop gracefully: its ranks' runners signal
    their children, which snapshot at their next step and exit (workers/runner.py). False:
    it is not running, or a stop was already asked."""
    updated = Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING, started_at=job.started_at, stop_request="").update(
        stop_request=reason, stop_requested_at=timezone.now(), stop_note=note[:300], preempted_for_id=preempted_for
    )
    if updated:  # on its timeline
        what = "its time limit" if reason == StopReason.TIMEOUT else f"{note}".strip() or "a higher-priority job"
        JobEvent.objects.create(
            job_id=job.pk, status=JobStatus.RUNNING, message=f"Asked to stop for {what}: it snapshots at its next step."
        )
    return bool(updated)
