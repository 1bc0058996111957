"""Reads for jobs (the home console)."""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any, cast

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models import Q, QuerySet
from django.utils import timezone

from .models import Allocation, Device, DeviceLimit, Job, JobStatus, TeamLimit
from .permissions import AnyUser, visible_q


def job_list(*, kind: str | None = None, status: str | None = None, group: str | None = None) -> QuerySet[Job]:
    jobs = Job.objects.select_related("owner").order_by("-created_at", "-id")
    if group:
        jobs = jobs.filter(group=group)
    if kind:
        jobs = jobs.filter(kind=kind)
    if status:
        jobs = jobs.filter(status=status)
    return jobs


CONSOLE_ACTIVE, CONSOLE_FINISHED = 100, 50


def job_console(user: AnyUser, group: str | None = None) -> dict[str, object]:
    """Running (and waiting) jobs first, then the latest finished ones; newest first in
    each; those `user` may see. With a group, only that group's jobs. The lists pages
    have the rest."""
    jobs = job_list(group=group).filter(visible_q(user))
    active = jobs.filter(status__in=JobStatus.active())
    return {
        "group": group or "",
        "groups": list(Job.objects.exclude(group="").order_by("group").values_list("group", flat=True).distinct()[:100]),
        "active": list(active[:CONSOLE_ACTIVE]),
        "active_count": active.count(),
        "finished": list(jobs.filter(status__in=JobStatus.finished())[:CONSOLE_FINISHED]),
    }


def job_devices(job: Job) -> list:
    """The allocations of the job's current (or last) attempt, by rank."""
    if not job.attempt:
        return []
    return list(job.allocations.filter(attempt=job.attempt).select_related("device").order_by("rank"))


# -- the GPU queue and devices (the cluster console, the model form, the API) ------------


def queue_summary() -> list[dict[str, Any]]:
    """The training queue in the order jobs would start, each with how long it has waited and why."""
    from .scheduler import QueueView, queued_jobs, wait_reason

    now = timezone.now()
    view = QueueView.now()
    rows = []
    for job in queued_jobs().select_related("owner").prefetch_related("requested_devices"):
        rows.append({"job": job, "waited": (now - (job.queued_at or job.created_at)).total_seconds(), **wait_reason(job, view)})
    # The order they would start in (fair share between users); held jobs after, in queue order.
    rows.sort(key=lambda row: view.ahead_of(cast(Job, row["job"]).pk))
    return rows


def device_board() -> list[dict[str, Any]]:
    """Every device with its live stats, its current job and the queued jobs asking for it."""
    from .live import live_stats
    from .scheduler import queued_jobs

    active = {
        a.device_id: a for a in Allocation.objects.filter(released_at__isnull=True).select_related("job", "owner")
    }
    asked: dict[int, list[Job]] = defaultdict(list)
    # Only the queued jobs pinned to devices (the few that ask for particular ones), all of them.
    pinned = queued_jobs().filter(requested_devices__isnull=False).distinct()
    for job in pinned.prefetch_related("requested_devices"):
        for device in job.requested_devices.all():
            asked[device.pk].append(job)
    devices = list(Device.objects.all())
    live = live_stats([d.uuid for d in devices])
    return [
        {
            "device": d,
            "stats": live.get(d.uuid) or d.stats,
            "allocation": active.get(d.pk),
            "asked": asked.get(d.pk, []),
            "state": device_state(d, active.get(d.pk)),
        }
        for d in devices
    ]


def device_state(device: Device, allocation: Allocation | None) -> str:
    if not device.online:
        return "offline"
    if not device.enabled:
        return "draining" if allocation is not None else "drained"
    return "busy" if allocation is not None else "free"


def usage_by_user(since: datetime | None = None) -> list[dict[str, Any]]:
    """Device-hours, jobs and devices in use per user, over the history or since a time."""
    rows = Allocation.objects.filter(started_at__isnull=False).select_related("owner")
    if since is not None:
        rows = rows.filter(Q(released_at__isnull=True) | Q(released_at__gte=since))
    totals: dict[int, dict[str, Any]] = {}
    for a in rows:
        entry = totals.setdefault(a.owner_id, {"user": a.owner, "seconds": 0.0, "jobs": set(), "running": 0})
        entry["seconds"] += a.seconds
        entry["jobs"].add(a.job_id or -a.pk)
        if a.released_at is None:
            entry["running"] += 1
    out = [
        {"user": e["user"], "device_hours": e["seconds"] / 3600, "jobs": len(e["jobs"]), "running": e["running"]}
        for e in totals.values()
    ]
    return sorted(out, key=lambda e: -e["device_hours"])


def usage_history(limit: int = 200) -> QuerySet[Allocation]:
    """Who ran what on which device for how long, newest first."""
    return Allocation.objects.filter(started_at__isnull=False).select_related("owner", "device", "job")[:limit]


def user_limits() -> list[dict[str, Any]]:
    """Every active user with their limits (an override, or the default), what they use
    now and in the last 7 days, their team and their fair-share usage."""
    from django.conf import settings

    from . import fairshare
    from .scheduler import devices_in_use_by_user

    overrides = {
        u: (d, h, j)
        for u, d, h, j in DeviceLimit.objects.values_list("user_id", "max_devices", "max_device_hours_per_week", "max_job_hours")
    }
    in_use = devices_in_use_by_user()
    weekly = fairshare.weekly_device_hours()
    decayed = fairshare.usage_hours()
    team_of = fairshare.teams_of()
    names = dict(Group.objects.filter(pk__in=set(team_of.values())).values_list("pk", "name"))
    rows = []
    for user in get_user_model().objects.filter(is_active=True).order_by("username"):
        devices, hours, job_hours = overrides.get(user.pk, (None, None, None))
        rows.append({
            "user": user,
            "team": names.get(team_of.get(user.pk, -1), ""),
            "limit": settings.USER_DEVICE_LIMIT if devices is None else devices,
            "override": devices is not None,
            "hours_limit": settings.USER_DEVICE_HOURS_PER_WEEK if hours is None else hours,
            "hours_override": hours is not None,
            "job_hours": settings.JOB_TIME_LIMIT_HOURS if job_hours is None else job_hours,
            "job_hours_override": job_hours is not None,
            "in_use": in_use[user.pk],
            "week_hours": weekly.get(user.pk, 0.0),
            "fair_share_hours": decayed.get(user.pk, 0.0),
        })
    return rows


def team_limits() -> list[dict[str, Any]]:
    """Every team (Django group) with its quota, members, devices held and weekly use."""
    from . import fairshare
    from .scheduler import devices_in_use_by_user

    limits = {t: (d, h) for t, d, h in TeamLimit.objects.values_list("team_id", "max_devices", "max_device_hours_per_week")}
    team_of = fairshare.teams_of()
    in_use = devices_in_use_by_user()
    weekly = fairshare.weekly_device_hours()
    decayed = fairshare.usage_hours()
    rows = []
    for team in Group.objects.order_by("name"):
        members = [u for u, t in team_of.items() if t == team.pk]
        devices, hours = limits.get(team.pk, (0, 0.0))
        rows.append({
            "team": team,
            "members": len(members),
            "max_devices": devices,
            "max_device_hours_per_week": hours,
            "in_use": sum(in_use[u] for u in members),
            "week_hours": sum(weekly.get(u, 0.0) for u in members),
            "fair_share_hours": sum(decayed.get(u, 0.0) for u in members),
        })
    return rows
