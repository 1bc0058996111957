"""Single sign-on through an OpenID Connect provider (mozilla-django-oidc), optional: on
when DIGITS_OIDC_CLIENT_ID is set (digits_site/settings.py, README "Single sign-on").

Users are found by their identity at the provider (issuer and subject: SsoIdentity), never
by a name or an e-mail, which a provider may let anyone choose: a first login creates an
account named after `preferred_username` (else the e-mail's local part), unless an account
of that name exists here, which an admin links first (admin → Single sign-on identities).
With DIGITS_OIDC_TEAMS_CLAIM, the teams (existing Django groups) a user is in follow that
claim at every login; admins still create the teams."""
from __future__ import annotations

import logging
from typing import Any

import jwt
import requests
from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.models import AbstractBaseUser, Group
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from .models import SsoIdentity

log = logging.getLogger(__name__)


def username_of(claims: dict[str, Any]) -> str:
    name = claims.get("preferred_username") or (claims.get("email") or "").split("@")[0]
    return str(name)[:150]


class OidcBackend(OIDCAuthenticationBackend):
    def authenticate(self, request: HttpRequest | None, **kwargs: Any) -> AbstractBaseUser | None:
        """A refused or broken answer from the provider is a failed login (the login page
        says so), never a server error."""
        try:
            return super().authenticate(request, **kwargs)
        except (requests.RequestException, SuspiciousOperation, jwt.PyJWTError, ValueError) as exc:
            log.warning("single sign-on failed: %s: %s", type(exc).__name__, exc)
            return None

    def verify_token(self, token: str, **kwargs: Any) -> dict[str, Any]:
        """The signature and nonce (the library), and what it leaves out: that the token
        was issued to this site, by the configured issuer."""
        payload: dict[str, Any] = super().verify_token(token, **kwargs)
        audience = payload.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if settings.OIDC_RP_CLIENT_ID not in audiences:
            raise SuspiciousOperation(f"the ID token is for {audience!r}, not this site")
        if settings.OIDC_ISSUER and payload.get("iss") != settings.OIDC_ISSUER:
            raise SuspiciousOperation(f"the ID token was issued by {payload.get('iss')!r}, not {settings.OIDC_ISSUER!r}")
        return payload

    def verify_claims(self, claims: dict[str, Any]) -> bool:
        return bool(username_of(claims))

    def filter_users_by_claims(self, claims: dict[str, Any]) -> QuerySet[Any]:
        return self.UserModel.objects.none()  # never by name or e-mail: get_or_create_user

    def get_or_create_user(self, access_token: str, id_token: str, payload: dict[str, Any]) -> AbstractBaseUser | None:
        """The user of this identity (issuer, subject); at its first login, a new account,
        unless one of its name exists here (an admin links them, or it is someone else's)."""
        claims = self.get_userinfo(access_token, id_token, payload)
        issuer, subject = str(payload.get("iss", "")), str(payload.get("sub", ""))
        if not subject or claims.get("sub", subject) != subject:
            raise SuspiciousOperation("the user info is not about the ID token's subject")
        identity = SsoIdentity.objects.filter(issuer=issuer, subject=subject).select_related("user").first()
        if identity is not None:
            return self.update_user(identity.user, claims)
        if not self.verify_claims(claims):
            raise SuspiciousOperation("the provider gave no user name or e-mail")
        name = username_of(claims)
        if self.UserModel.objects.filter(username=name).exists():
            self._say(
                f"An account named {name!r} exists on this site, and single sign-on does not take an account over by "
                "its name. If it is yours, ask an admin to link it to your sign-on identity (admin → Single sign-on "
                f"identities: subject {subject!r}); then log in with single sign-on again."
            )
            log.warning("single sign-on refused: %s at %s would take over the existing account %r", subject, issuer, name)
            return None
        with transaction.atomic():
            user: Any = self.create_user(claims)
            SsoIdentity.objects.create(user=user, issuer=issuer, subject=subject)
        return user

    def _say(self, message: str) -> None:
        """Why the login failed, for the login page (the session outlives the redirect)."""
        request = getattr(self, "request", None)
        if request is not None and hasattr(request, "session"):
            request.session["sso_error"] = message

    def create_user(self, claims: dict[str, Any]) -> AbstractBaseUser:
        user = self.UserModel.objects.create_user(username_of(claims), email=claims.get("email", ""))  # no password
        return self.update_user(user, claims)

    def update_user(self, user: Any, claims: dict[str, Any]) -> AbstractBaseUser:
        user.email = claims.get("email", user.email)
        user.first_name = str(claims.get("given_name", user.first_name))[:150]
        user.last_name = str(claims.get("family_name", user.last_name))[:150]
        user.save(update_fields=["email", "first_name", "last_name"])
        if settings.OIDC_TEAMS_CLAIM:
            named = claims.get(settings.OIDC_TEAMS_CLAIM) or []
            named = [named] if isinstance(named, str) else list(named)
            user.groups.set(Group.objects.filter(name__in=[str(n) for n in named]))
        return user


def _only_when_enabled(view: Any) -> Any:
    @login_not_required
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not settings.OIDC_ENABLED:
            raise Http404("Single sign-on is not configured on this site.")
        return view(request, *args, **kwargs)

    return wrapped


sso_start = _only_when_enabled(OIDCAuthenticationRequestView.as_view())
sso_callback = _only_when_enabled(OIDCAuthenticationCallbackView.as_view())


class LoginView(auth_views.LoginView):
    """The login page, with a "Log in with <provider>" button when single sign-on is on,
    and what to do when it did not work."""

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["sso_name"] = settings.OIDC_PROVIDER_NAME if settings.OIDC_ENABLED else ""
        context["sso_failed"] = settings.OIDC_ENABLED and self.request.GET.get("sso") == "failed"
        context["sso_error"] = self.request.session.pop("sso_error", "") if context["sso_failed"] else ""
        return context
