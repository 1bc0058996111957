"""Reads for jobs (the home console)."""
from __future__ import annotations

from django.db.models import QuerySet

from .models import Job, JobStatus


def job_list(*, kind: str | None = None, status: str | None = None) -> QuerySet[Job]:
    jobs = Job.objects.select_related("owner").order_by("-created_at", "-id")
    if kind:
        jobs = jobs.filter(kind=kind)
    if status:
        jobs = jobs.filter(status=status)
    return jobs


def job_console() -> dict[str, list[Job]]:
    """Running (and waiting) jobs first, then finished ones; newest first in each."""
    jobs = list(job_list()[:300])
    return {
        "active": [j for j in jobs if j.status in JobStatus.active()],
        "finished": [j for j in jobs if j.status in JobStatus.finished()],
    }
