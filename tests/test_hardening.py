"""Hardening: production settings pass `manage.py check --deploy`; repeated failed logins
lock a username out (pages and the token endpoint); destructive and admin actions are in
an audit log that admins, and only they, can read."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest
from django.conf import settings
from django.test import Client

from tests.conftest import token_client
from tests.factories import make_dataset, make_model
from workers.models import AuditEntry, Device, Job


def deploy_check(**env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DIGITS_HTTPS")}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=settings.BASE_DIR, env={**base, "DEBUG": "0", "SECRET_KEY": secrets.token_urlsafe(50), **env},
        capture_output=True, text=True, timeout=120,
    )


def test_production_settings_pass_the_deploy_check() -> None:
    production = deploy_check(DIGITS_HTTPS="1", ALLOWED_HOSTS="digits.example.org")
    assert production.returncode == 0, production.stdout + production.stderr
    assert "no issues" in production.stdout
    # Without HTTPS settled the check does complain (so the test above can fail).
    plain = deploy_check(ALLOWED_HOSTS="digits.example.org")
    assert plain.returncode != 0 and "SESSION_COOKIE_SECURE" in plain.stdout + plain.stderr


@pytest.mark.django_db
def test_repeated_failed_logins_lock_the_username_out(django_user_model) -> None:
    django_user_model.objects.create_user("victim", password="right-password")
    browser = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        failed = browser.post("/accounts/login/", {"username": "victim", "password": "guess"})
        assert failed.status_code == 200 and "didn't match" in failed.content.decode()
    last = browser.post("/accounts/login/", {"username": "victim", "password": "guess"})
    assert last.status_code == 429 and "Too many failed logins" in last.content.decode()
    locked = browser.post("/accounts/login/", {"username": "victim", "password": "right-password"})
    assert locked.status_code == 429 and "Too many failed logins" in locked.content.decode()
    assert "_auth_user_id" not in browser.session
    # The token endpoint (the CLI's login) is refused as well.
    token = Client().post("/api/token/", {"username": "victim", "password": "right-password"})
    assert token.status_code == 400 and b'"token"' not in token.content
    # Another user from the same address is not locked out, on either.
    django_user_model.objects.create_user("other", password="pw-other-1")
    assert Client().post("/accounts/login/", {"username": "other", "password": "pw-other-1"}).status_code == 302
    assert "token" in Client().post("/api/token/", {"username": "other", "password": "pw-other-1"}).json()
    # An admin unlocks it.
    from axes.utils import reset

    reset(username="victim")
    assert Client().post("/accounts/login/", {"username": "victim", "password": "right-password"}).status_code == 302


@pytest.mark.django_db
def test_destructive_and_admin_actions_are_audited(owner, teammate, admin_user) -> None:
    dataset = make_dataset(owner, name="audited-data")
    doomed = make_model(owner, dataset, name="doomed")
    kept = make_model(owner, dataset, name="kept")
    other = make_model(owner, dataset, name="by-api")
    page = Client()
    page.force_login(owner)
    assert page.post(f"/models/{doomed.pk}/delete/").status_code == 302
    assert token_client(owner).delete(f"/api/models/{other.pk}/").status_code == 204
    intruder = Client()
    intruder.force_login(teammate)
    assert intruder.post(f"/models/{kept.pk}/delete/").status_code == 403
    device = Device.objects.create(uuid="cpu-audit-0", host="h", address="127.0.0.1", kind="cpu", index=0, name="cpu")
    admin = Client()
    admin.force_login(admin_user)
    admin.post(f"/cluster/devices/{device.pk}/", {"action": "drain"})
    admin.post(f"/cluster/limits/{teammate.pk}/", {"max_devices": "2"})
    page.get(f"/models/{kept.pk}/")  # reading is not recorded
    rows = list(AuditEntry.objects.order_by("id").values_list("username", "action", "target", "status"))
    assert rows == [
        ("owner", "deleted a model", f"model #{doomed.pk} 'doomed'", 302),
        ("owner", "deleted a model", f"model #{other.pk} 'by-api'", 204),
        ("teammate", "deleted a model", f"model #{kept.pk} 'kept'", 403),
        (admin_user.username, "drained or enabled a device", "device h/cpu0", 302),
        (admin_user.username, "set a user's limits", f"user #{teammate.pk}", 302),
    ]
    assert Job.objects.filter(pk=kept.pk).exists()
    # Admins read it on a page and through the API; nobody else does.
    page_html = admin.get("/cluster/audit/?action=deleted").content.decode()
    shown = page_html[page_html.index('<table id="audit">'):]
    assert "doomed" in shown and "by-api" in shown and "refused (403)" in shown and "h/cpu0" not in shown
    listed = token_client(admin_user).get(f"/api/audit/?username={admin_user.username}").json()
    assert listed["count"] == 2 and {r["action"] for r in listed["results"]} == {"drained or enabled a device", "set a user's limits"}
    assert token_client(owner).get("/api/audit/").status_code == 403
    assert page.get("/cluster/audit/").status_code == 403


@pytest.mark.django_db
def test_the_audit_list_takes_any_valid_time_with_any_offset(admin_user) -> None:
    """Found by schemathesis: an offset the database does not take (-17:04) was a 500."""
    api = token_client(admin_user)
    assert api.get("/api/audit/", {"since": "1746-06-12T06:56:19.84674-17:04"}).status_code == 200
    edge = api.get("/api/audit/", {"since": "0001-01-01T00:00:00+05:00"})  # year 0 in UTC
    assert edge.status_code == 400 and "since" in edge.json()["errors"]
