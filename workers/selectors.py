"""Reads for jobs (the home console)."""
from __future__ import annotations

from django.db.models import QuerySet

from .models import Job, JobStatus


def job_list(*, kind: str | None = None, status: str | None = None, group: str | None = None) -> QuerySet[Job]:
    jobs = Job.objects.select_related("owner").order_by("-created_at", "-id")
    if group:
        jobs = jobs.filter(group=group)
    if kind:
        jobs = jobs.filter(kind=kind)
    if status:
        jobs = jobs.filter(status=status)
    return jobs


def job_console(group: str | None = None) -> dict[str, object]:
    """Running (and waiting) jobs first, then finished ones; newest first in each. With a
    group, only that group's jobs."""
    jobs = list(job_list(group=group)[:300])
    return {
        "group": group or "",
        "groups": list(Job.objects.exclude(group="").order_by("group").values_list("group", flat=True).distinct()[:100]),
        "active": [j for j in jobs if j.status in JobStatus.active()],
        "finished": [j for j in jobs if j.status in JobStatus.finished()],
    }
