"""Seeing one object: every page and endpoint whose URL names a job (a dataset, a model,
an evaluation, an export, a job's log) or a sweep answers 404 to a user who may not see
it (workers/permissions.py), before its view runs. Pages check it in a middleware (the
session's user), the API in a DRF permission class (after token authentication), so no
view can forget it."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.http import Http404, HttpRequest, HttpResponseBase
from rest_framework.exceptions import NotFound
from rest_framework.permissions import BasePermission

from workers.permissions import AnyUser, can_view

if TYPE_CHECKING:  # DRF loads this module (a default permission class) while its views module loads
    from rest_framework.request import Request
    from rest_framework.views import APIView

# URLs whose `pk` is not a job's.
SWEEP_URLS = {"api_sweep", "api_sweep_abort", "sweep_detail", "sweep_abort"}
OTHER_IDS = {"api_upload", "api_device", "cluster_device", "api_s3_credential", "s3_credential_delete"}
# (the owner's uploads and S3 credentials, checked by their views; devices: everyone)
HIDDEN = "No such page or object; check the address (ids are whole numbers)."


def url_object_visible(user: AnyUser, url_name: str, kwargs: dict[str, Any]) -> bool:
    key = "pk" if "pk" in kwargs else "job_id" if "job_id" in kwargs else None
    if key is None or url_name in OTHER_IDS or not user.is_authenticated:
        return True  # nothing to check here (logging in is checked elsewhere)
    try:
        pk = int(kwargs[key])
    except (TypeError, ValueError):
        return True
    if url_name in SWEEP_URLS:
        from models_app.sweeps import sweep_visible  # (not at import: see above)

        return sweep_visible(user, pk)
    if not can_view(user, pk):
        return False
    if url_name.startswith(("evaluation_", "api_evaluation", "export_", "api_export")):
        # Made by anyone who could see the model: seen only by who still can see the model too.
        from models_app.models import Evaluation, Export

        rows = Evaluation.objects if "evaluation" in url_name else Export.objects
        model_id = rows.filter(pk=pk).values_list("model_id", flat=True).first()
        return model_id is None or can_view(user, model_id)
    return True


class VisibilityMiddleware:
    """Pages (the API's token users are known only inside DRF: ObjectInUrlVisible)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view_func: Callable[..., HttpResponseBase], view_args: tuple[Any, ...], view_kwargs: dict[str, Any]
    ) -> HttpResponseBase | None:
        if request.path.startswith("/api/") or request.resolver_match is None:
            return None
        if not url_object_visible(request.user, request.resolver_match.url_name or "", view_kwargs):
            raise Http404(HIDDEN)
        return None


class ObjectInUrlVisible(BasePermission):
    """The API: 404 for an object the user may not see."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        match = request.resolver_match
        if match is not None and not url_object_visible(request.user, match.url_name or "", view.kwargs):
            raise NotFound(HIDDEN)
        return True
