"""What the web interface stores of its own: the identities single sign-on knows."""
from __future__ import annotations

from django.conf import settings
from django.db import models


class SsoIdentity(models.Model):
    """An account at the identity provider (its issuer and subject, which never change,
    unlike names and e-mails) and the user it logs in as here. Made at a user's first
    single sign-on, or by an admin to link an existing account (frontend/sso.py)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sso_identities")
    issuer = models.CharField(max_length=500, help_text="The provider's `iss`, e.g. https://idp.example/realms/lab")
    subject = models.CharField(max_length=255, help_text="The account's `sub` at that provider")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "single sign-on identity"
        verbose_name_plural = "single sign-on identities"
        constraints = [models.UniqueConstraint(fields=["issuer", "subject"], name="unique_sso_identity")]

    def __str__(self) -> str:
        return f"{self.subject} at {self.issuer} → {self.user}"
