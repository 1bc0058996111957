"""Errors on pages keep the page they came from: a form sent from one of our pages that
is refused outside its view's own validation (someone else's job, a conflict, a body too
large, an expired CSRF token) brings the user back to that page, its form and the
message, instead of a dead-end error page."""
from __future__ import annotations

import logging

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.utils.http import url_has_allowed_host_and_scheme

log = logging.getLogger("django.request")


def sent_from(request: HttpRequest) -> str | None:
    """The page of ours a form was posted from, or None (not a POST, the API, no or a
    foreign Referer: a script, or a link from elsewhere, gets the plain error page)."""
    if request.method != "POST" or request.path.startswith("/api/"):
        return None
    referer = request.META.get("HTTP_REFERER", "")
    if not referer or not url_has_allowed_host_and_scheme(referer, {request.get_host()}, require_https=request.is_secure()):
        return None
    return referer


def back_to_form(request: HttpRequest, message: str, status: int) -> HttpResponse | None:
    """Back to the form's page with `message` shown on it; None where there is no such page.
    The refusal is still logged once, as Django logs a 4xx response, with no traceback."""
    page = sent_from(request)
    if page is None or not hasattr(request, "_messages"):
        return None
    log.warning("Refused (%s): %s %s: %s", status, request.method, request.path, message)
    request.audit_status = status  # type: ignore[attr-defined]  # read by workers/audit.py
    messages.error(request, message)
    return HttpResponseRedirect(page)
