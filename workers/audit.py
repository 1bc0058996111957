"""The audit log: who did what, when (workers.models.AuditEntry).

One middleware records, after the response, every state-changing request (POST, PUT,
PATCH, DELETE) of a signed-in user to a page or endpoint listed in AUDITED, and every
change made in the Django admin, with its outcome (status). The object's name is read
before the view runs, so a deleted dataset is still named. Pages and the API share the
list, so nothing can be done on one side without a trace that the other would leave.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.urls import Resolver404, resolve

from .models import AuditEntry, Device, Job

log = logging.getLogger(__name__)

# url name -> what it does (for requests that change something).
AUDITED: dict[str, str] = {
    "dataset_delete": "deleted a dataset", "model_delete": "deleted a model", "export_delete": "deleted an export",
    "evaluation_delete": "deleted an evaluation", "dataset_abort": "aborted a dataset", "model_abort": "aborted a model",
    "evaluation_abort": "aborted an evaluation", "sweep_abort": "stopped a sweep", "jobs_bulk": "bulk action",
    "api_dataset_abort": "aborted a dataset", "api_model_abort": "aborted a model", "api_sweep_abort": "stopped a sweep",
    "api_jobs_bulk": "bulk action", "cluster_job": "queue action", "api_queue_job": "queue action",
    "cluster_device": "drained or enabled a device", "api_device": "drained or enabled a device",
    "cluster_limit": "set a user's limits", "api_user_limit": "set a user's limits",
    "cluster_team_limit": "set a team's quota", "api_team_limit": "set a team's quota",
    "profile_token": "replaced their API token",
    "dataset_edit": "edited a dataset", "model_edit": "edited a model",
}
# The API's object endpoints: what a DELETE, PATCH or PUT does to which kind of object.
OBJECTS: dict[str, str] = {
    "api_dataset": "dataset", "api_model": "model", "api_export": "export", "api_evaluation": "evaluation",
    "api_sweep": "sweep", "api_job": "job",
}
VERBS = {"DELETE": "deleted", "PATCH": "changed", "PUT": "changed"}
DEVICE_URLS = {"cluster_device", "api_device"}
CHANGING = {"POST", "PUT", "PATCH", "DELETE"}


class AuditMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        action = target = ""
        if request.method in CHANGING:
            try:
                action, target = _what(request)
            except Exception:  # whatever the request holds, the audit must not break it
                log.exception("could not tell what %s %s does", request.method, request.path)
                action, target = "unreadable request", ""
        response = self.get_response(request)
        user = getattr(request, "user", None)
        if action and user is not None and user.is_authenticated:
            try:
                AuditEntry.objects.create(
                    user=user, username=user.get_username(), action=action, target=target[:300], method=request.method or "",
                    # A refusal shown back on the form's page is a redirect, but a refusal.
                    path=request.path[:500], status=getattr(request, "audit_status", response.status_code), address=request.META.get("REMOTE_ADDR", "")[:64],
                )
            except Exception:  # the action is done: a failed audit write is logged, never turned into an error page
                log.exception("could not record the audit entry of %s %s", request.method, request.path)
        return response


def _what(request: HttpRequest) -> tuple[str, str]:
    """(what the request does, the object it acts on) or ("", "") when it is not audited."""
    try:
        match = resolve(request.path_info)
    except Resolver404:
        return "", ""
    name = match.url_name or ""
    if match.namespace == "admin" or request.path_info.startswith("/admin/"):
        return f"admin: {name.replace('_', ' ')}", " ".join(str(v) for v in match.kwargs.values())
    if name in OBJECTS and request.method in VERBS:
        action = f"{VERBS[request.method or '']} a {OBJECTS[name]}"
    else:
        action = AUDITED.get(name, "")
    if not action:
        return "", ""
    kwargs = match.kwargs
    if name in ("jobs_bulk", "api_jobs_bulk"):
        return action, _bulk_target(request)
    if name in DEVICE_URLS and "pk" in kwargs:
        label = Device.objects.filter(pk=kwargs["pk"]).first()
        return action, f"device {label.label}" if label else f"device #{kwargs['pk']}"
    if "pk" in kwargs or "job_id" in kwargs:
        pk = kwargs["pk"] if "pk" in kwargs else kwargs["job_id"]
        row = Job.objects.filter(pk=pk).values_list("kind", "name").first()
        return action, f"{row[0]} #{pk} {row[1]!r}" if row else f"#{pk}"
    for key in ("user_id", "team_id"):
        if key in kwargs:
            return action, f"{key.removesuffix('_id')} #{kwargs[key]}"
    return action, ""


def _bulk_target(request: HttpRequest) -> str:
    """The ids a bulk action names (a form's `ids`, or the API's JSON body)."""
    ids: list[str] = []
    if request.content_type == "application/json":
        try:
            payload = json.loads(request.body or b"{}")
        except ValueError:
            payload = {}
        found = payload.get("ids") if isinstance(payload, dict) else None
        ids = [str(i) for i in found][:50] if isinstance(found, list) else []
    else:
        ids = request.POST.getlist("ids")[:50]
    return "jobs " + ", ".join(f"#{i}" for i in ids) if ids else ""
