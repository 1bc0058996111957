from django.contrib import admin

from .models import SsoIdentity


@admin.register(SsoIdentity)
class SsoIdentityAdmin(admin.ModelAdmin):
    """Link an existing account to its single sign-on identity (the provider's issuer and
    subject): single sign-on never takes over an account of the same name by itself."""

    list_display = ["user", "subject", "issuer", "created_at"]
    search_fields = ["user__username", "subject", "issuer"]
    raw_id_fields = ["user"]
