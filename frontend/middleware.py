"""Login on every page. The REST API (/api/) authenticates itself (token or session) and
answers 401/403 as JSON instead of redirecting to the login page."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth.middleware import LoginRequiredMiddleware as DjangoLoginRequired
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import render

from workers.errors import JobError

from .errors import back_to_form


class LoginRequiredMiddleware(DjangoLoginRequired):
    def process_view(
        self, request: HttpRequest, view_func: Callable[..., HttpResponseBase], view_args: tuple[Any, ...], view_kwargs: dict[str, Any]
    ) -> HttpResponseBase | None:
        if request.path.startswith("/api/") or request.path.startswith("/static/"):
            return None
        return super().process_view(request, view_func, view_args, view_kwargs)


class DomainErrorMiddleware:
    """Pages: a domain error that a view did not turn into a form error (a Forbidden, a
    NotFound, a Conflict, or a plain JobError) shows its message, the same one the API
    gives: on the page whose form was sent, or else on an error page with its status."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, JobError) or request.path.startswith("/api/"):
            return None
        return back_to_form(request, str(exception), exception.status_code) or render(
            request, "error.html", {"message": str(exception)}, status=exception.status_code
        )
