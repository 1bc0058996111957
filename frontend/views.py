"""The home console and the profile page (API token)."""
from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST
from rest_framework.authtoken.models import Token

from workers.selectors import job_console


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "home.html", job_console(group=request.GET.get("group") or None))


def profile(request: HttpRequest) -> HttpResponse:
    token = Token.objects.filter(user=request.user).first()
    return render(request, "profile.html", {"token": token})


@require_POST
def profile_token(request: HttpRequest) -> HttpResponse:
    """Create, or replace, the user's API token."""
    Token.objects.filter(user=request.user).delete()
    Token.objects.create(user=request.user)
    return redirect("profile")
