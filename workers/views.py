"""The cluster console (staff only): devices with live stats and their jobs, the training
queue in fair-share order with reorder, priority, hold/release and cancel, drain/enable,
per-user and per-team limits and quotas, and who used which device for how long. Thin views over workers.services."""
from __future__ import annotations

from datetime import timedelta

from collections.abc import Callable
from functools import wraps
from typing import Any, cast

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from . import kinds
from .models import AuditEntry, Device, Job, Priority
from .selectors import device_board, queue_summary, team_limits, usage_by_user, usage_history, user_limits
from .errors import JobError
from .permissions import check_staff, current_user
from .services import (
    device_set_enabled, job_abort, jobs_bulk, queue_hold, queue_move, queue_set_priority, team_limit_set, user_limit_set,
)


def staff_only(view: Callable) -> Callable:
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        check_staff(request.user, "use the cluster console")
        return view(request, *args, **kwargs)

    return wrapper


@staff_only
def cluster(request: HttpRequest) -> HttpResponse:
    week = timezone.now() - timedelta(days=7)
    return render(
        request,
        "cluster/console.html",
        {
            "devices": device_board(),
            "queue": queue_summary(),
            "limits": user_limits(),
            "teams": team_limits(),
            "half_life_days": settings.FAIR_SHARE_HALF_LIFE_DAYS,
            "usage": usage_by_user(),
            "usage_week": usage_by_user(since=week),
            "history": usage_history(),
            "priorities": Priority.choices,
        },
    )


@staff_only
@require_POST
def cluster_device(request: HttpRequest, pk: int) -> HttpResponse:
    device = get_object_or_404(Device, pk=pk)
    enabled = request.POST.get("action") == "enable"
    device_set_enabled(device, enabled)
    messages.success(
        request,
        f"{device.label} is enabled." if enabled else f"{device.label} is draining: its current job finishes, no new job starts.",
    )
    return redirect("cluster")


@staff_only
@require_POST
def cluster_job(request: HttpRequest, pk: int) -> HttpResponse:
    job = get_object_or_404(Job, pk=pk, kind__in=kinds.device_kinds())
    action = request.POST.get("action", "")
    try:
        if action in ("up", "down", "top", "bottom"):
            queue_move(job, action)
        elif action in ("hold", "release"):
            queue_hold(job, action == "hold")
        elif action == "priority":
            queue_set_priority(job, int(request.POST.get("priority", "")))
        elif action == "cancel":
            job_abort(job)
        else:
            raise JobError("Unknown action.")
    except (JobError, ValueError) as exc:
        messages.error(request, f"{job.name}: {exc}")
    else:
        messages.success(request, f"{job.name}: {action} done.")
    return redirect("cluster")


def _number(value: str, kind: type[int] | type[float]) -> int | float | None:
    """A form's number: empty is None; anything else must parse (ValueError)."""
    value = value.strip()
    return None if value == "" else kind(value)


@staff_only
@require_POST
def cluster_limit(request: HttpRequest, user_id: int) -> HttpResponse:
    user = get_object_or_404(get_user_model(), pk=user_id)
    try:
        user_limit_set(
            user,
            cast(int | None, _number(request.POST.get("max_devices", ""), int)),
            _number(request.POST.get("max_device_hours_per_week", ""), float),
            _number(request.POST.get("max_job_hours", ""), float),
        )
    except JobError as exc:
        messages.error(request, f"{user.username}: {exc}")
    except ValueError:
        messages.error(request, "A limit is a number: 0 for no limit, or empty for the default.")
    else:
        messages.success(request, f"Limits of {user.username} saved.")
    return redirect("cluster")


@staff_only
def cluster_audit(request: HttpRequest) -> HttpResponse:
    """Who did what, when: destructive and admin actions, newest first, 100 a page;
    ?user= and ?action= narrow it."""
    entries = AuditEntry.objects.all()
    if request.GET.get("user"):
        entries = entries.filter(username=request.GET["user"])
    if request.GET.get("action"):
        entries = entries.filter(action__icontains=request.GET["action"])
    page = Paginator(entries, 100).get_page(request.GET.get("page"))
    # "who", not "user": that name is the signed-in user's in every template (the menu).
    return render(request, "cluster/audit.html", {"page": page, "who": request.GET.get("user", ""),
                                                  "action": request.GET.get("action", "")})


@staff_only
@require_POST
def cluster_team_limit(request: HttpRequest, team_id: int) -> HttpResponse:
    team = get_object_or_404(Group, pk=team_id)
    try:
        team_limit_set(
            team,
            cast(int, _number(request.POST.get("max_devices", ""), int) or 0),
            _number(request.POST.get("max_device_hours_per_week", ""), float) or 0.0,
        )
    except JobError as exc:
        messages.error(request, f"{team.name}: {exc}")
    except ValueError:
        messages.error(request, "A quota is a number: 0 or empty for no limit.")
    else:
        messages.success(request, f"Quota of team {team.name} saved.")
    return redirect("cluster")


@require_POST
def jobs_bulk_view(request: HttpRequest) -> HttpResponse:
    """The lists' bulk actions (abort, delete, move to a group) on the ticked jobs; back
    to the list with what was done and what was skipped, and why."""
    back = request.POST.get("next", "")
    back = back if back.startswith("/") and not back.startswith("//") else "/"
    try:
        result = jobs_bulk(current_user(request.user), [int(i) for i in request.POST.getlist("ids") if i.isdecimal()],
                           request.POST.get("action", ""), group=request.POST.get("group", "").strip())
    except JobError as exc:
        messages.error(request, str(exc))
        return redirect(back)
    verb = {"abort": "aborted", "delete": "deleted", "group": "moved"}[request.POST["action"]]
    if result["done"]:
        messages.success(request, f"{len(result['done'])} {verb}.")
    for skipped in result["skipped"][:10]:
        messages.error(request, f"#{skipped['id']} skipped: {skipped['reason']}")
    return redirect(back)
