"""The home console, a job's raw log and the profile page (API token)."""
from __future__ import annotations

from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST
from rest_framework.authtoken.models import Token

from workers.api import job_log_response
from workers.models import Job
from workers.permissions import current_user
from workers.selectors import job_console

from .errors import back_to_form


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "home.html", job_console(request.user, group=request.GET.get("group") or None))


def profile(request: HttpRequest) -> HttpResponse:
    token = Token.objects.filter(user=current_user(request.user)).first()
    return render(request, "profile.html", {"token": token})


@require_POST
def profile_token(request: HttpRequest) -> HttpResponse:
    """Create, or replace, the user's API token."""
    user = current_user(request.user)
    Token.objects.filter(user=user).delete()
    Token.objects.create(user=user)
    return redirect("profile")


def job_log(request: HttpRequest, pk: int) -> FileResponse:
    """The whole raw log of a job as text (?download=1: as a file). Teammates may read it."""
    job = get_object_or_404(Job, pk=pk)
    return job_log_response(job, download=request.GET.get("download") == "1")


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """404 for a URL that matches no page: JSON in the API's one error shape, a page elsewhere."""
    message = "No such page or object; check the address (ids are whole numbers)."
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": message}, status=404)
    return render(request, "error.html", {"message": message}, status=404)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """400 raised outside the views (a request with too many fields, a malformed body):
    JSON in the API's one error shape under /api/, a page elsewhere."""
    message = "The request could not be read (too many fields, or a malformed body); send it again as documented."
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": message}, status=400)
    return back_to_form(request, message, 400) or render(request, "error.html", {"message": message}, status=400)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """A form whose CSRF token no longer matches: most often a page left open across a log
    out and in, or in another tab. The page again, with a fresh token, and what to do."""
    expired = "The form had expired (its page was opened before your last log in or log out, or its cookie was cleared)."
    return back_to_form(request, f"{expired} It is shown again: send it once more.", 403) or render(
        request, "error.html", {"message": f"{expired} Reload the page it came from and send it again."}, status=403
    )


def server_error(request: HttpRequest) -> HttpResponse:
    message = "The server failed on this request; it is logged. Try again, or tell an admin what you did."
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": message}, status=500)
    return render(request, "error.html", {"message": message}, status=500)
