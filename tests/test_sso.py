"""Single sign-on (OpenID Connect) against a small identity provider of the test's own,
served over real HTTP: the authorization code flow, the ID token's signature, nonce,
audience and issuer, users matched by username, teams following a claim, and a refused
login that says so."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import pytest
import requests
from django.contrib.auth.models import Group, User
from django.test import Client

from frontend.models import SsoIdentity

pytestmark = pytest.mark.django_db

CLIENT_ID, SECRET, ISSUER = "digits", "a-client-secret-of-32-bytes-ok!!", "https://idp.example"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(claims: dict[str, Any], key: str) -> str:
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + _b64(json.dumps(claims).encode())
    return head + "." + _b64(hmac.new(key.encode(), head.encode(), hashlib.sha256).digest())


class Provider:
    """The identity provider: /authorize logs in `self.user` at once, /token trades the
    code for tokens, /userinfo answers with the user's claims."""

    def __init__(self) -> None:
        self.user: dict[str, Any] = {}
        self.codes: dict[str, dict[str, Any]] = {}
        self.token_overrides: dict[str, Any] = {}
        self.sign_key = SECRET
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, body: dict[str, Any], status: int = 200) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/authorize":
                    assert query["client_id"] == CLIENT_ID and query["response_type"] == "code"
                    code = f"code-{len(provider.codes)}"
                    provider.codes[code] = {"nonce": query.get("nonce"), "redirect_uri": query["redirect_uri"]}
                    self.send_response(302)
                    self.send_header("Location", query["redirect_uri"] + "?" + urlencode({"code": code, "state": query["state"]}))
                    self.end_headers()
                elif url.path == "/userinfo":
                    if self.headers.get("Authorization") != "Bearer access-" + provider.user["sub"]:
                        self._json({"error": "invalid_token"}, 401)
                    else:
                        self._json(provider.user)
                else:
                    self._json({"error": "not_found"}, 404)

            def do_POST(self) -> None:  # noqa: N802
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode()).items()}
                grant = provider.codes.pop(form.get("code", ""), None)
                if (grant is None or form.get("client_secret") != SECRET or form.get("client_id") != CLIENT_ID
                        or form.get("redirect_uri") != grant["redirect_uri"]):
                    self._json({"error": "invalid_grant"}, 400)
                    return
                now = int(time.time())
                claims = {"iss": ISSUER, "aud": CLIENT_ID, "sub": provider.user["sub"], "nonce": grant["nonce"],
                          "iat": now, "exp": now + 300, **provider.token_overrides}
                self._json({"id_token": hs256(claims, provider.sign_key), "access_token": "access-" + provider.user["sub"],
                            "token_type": "Bearer"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def provider(settings) -> Iterator[Provider]:
    idp = Provider()
    settings.OIDC_ENABLED = True
    settings.OIDC_RP_CLIENT_ID, settings.OIDC_RP_CLIENT_SECRET = CLIENT_ID, SECRET
    settings.OIDC_RP_SIGN_ALGO, settings.OIDC_ISSUER = "HS256", ISSUER
    settings.OIDC_OP_AUTHORIZATION_ENDPOINT = idp.url + "/authorize"
    settings.OIDC_OP_TOKEN_ENDPOINT = idp.url + "/token"
    settings.OIDC_OP_USER_ENDPOINT = idp.url + "/userinfo"
    settings.OIDC_TEAMS_CLAIM, settings.OIDC_PROVIDER_NAME = "groups", "Example ID"
    settings.AUTHENTICATION_BACKENDS = [
        "axes.backends.AxesStandaloneBackend", "frontend.sso.OidcBackend", "django.contrib.auth.backends.ModelBackend",
    ]
    yield idp
    idp.server.shutdown()


def sign_in(client: Client, next_url: str = "/models/") -> Any:
    """The browser's round trip: our site → the provider (which logs the user in at once)
    → our callback. Returns the callback's response."""
    start = client.get("/oidc/authenticate/", {"next": next_url})
    assert start.status_code == 302 and start["Location"].startswith(ISSUER_URL(client))
    at_provider = requests.get(start["Location"], allow_redirects=False, timeout=10)
    assert at_provider.status_code == 302
    callback = urlparse(at_provider.headers["Location"])
    assert callback.path == "/oidc/callback/"
    return client.get(callback.path + "?" + callback.query)


def ISSUER_URL(client: Client) -> str:  # noqa: N802 - reads like the constant it stands for
    from django.conf import settings

    return settings.OIDC_OP_AUTHORIZATION_ENDPOINT


def test_single_sign_on_creates_matches_and_syncs_teams(provider):
    vision = Group.objects.create(name="vision")
    audio = Group.objects.create(name="audio")
    page = Client().get("/accounts/login/?next=/models/")
    assert 'id="sso-login"' in page.content.decode() and "Log in with Example ID" in page.content.decode()

    provider.user = {"sub": "u-1", "preferred_username": "alice", "email": "alice@example.org",
                     "given_name": "Alice", "groups": ["vision", "no-such-team"]}
    client = Client()
    done = sign_in(client)
    assert done.status_code == 302 and done["Location"] == "/models/"
    assert client.get("/models/").status_code == 200
    alice = User.objects.get(username="alice")
    assert alice.email == "alice@example.org" and alice.first_name == "Alice" and not alice.has_usable_password()
    assert list(alice.groups.values_list("name", flat=True)) == ["vision"]  # existing teams only
    assert not Group.objects.filter(name="no-such-team").exists()

    # Next login: the same account, its teams as the provider now says.
    provider.user["groups"] = ["audio"]
    again = Client()
    assert sign_in(again).status_code == 302
    assert User.objects.filter(username="alice").count() == 1
    assert list(User.objects.get(username="alice").groups.all()) == [audio]
    assert vision.user_set.count() == 0

    # The provider's account, not its name, is who logs in: a renamed account is still alice.
    provider.user["preferred_username"] = "alice-renamed"
    assert sign_in(Client()).status_code == 302 and not User.objects.filter(username="alice-renamed").exists()

    # A local account of the same name is never taken over by its name (a provider may let
    # anyone pick "admin"): the login is refused, saying what to do...
    bob = User.objects.create_user("bob", "old@example.org", "pw-bob", is_superuser=True, is_staff=True)
    provider.user = {"sub": "u-2", "preferred_username": "bob", "email": "bob@example.org"}
    client = Client()
    refused = sign_in(client)
    assert refused.status_code == 302 and refused["Location"] == "/accounts/login/?sso=failed"
    page = client.get(refused["Location"]).content.decode()
    assert "An account named &#x27;bob&#x27; exists on this site" in page and "ask an admin to link it" in page
    assert client.get("/models/").status_code == 302 and User.objects.get(username="bob").email == "old@example.org"
    # ... until an admin links that identity to it.
    SsoIdentity.objects.create(user=bob, issuer=ISSUER, subject="u-2")
    assert sign_in(Client()).status_code == 302
    bob.refresh_from_db()
    assert bob.email == "bob@example.org" and bob.check_password("pw-bob")  # the password still works too


@pytest.mark.parametrize(
    "tamper",
    ["wrong key", "other audience", "other issuer", "expired"],
)
def test_a_token_that_does_not_verify_is_a_refused_login_that_says_so(provider, tamper):
    provider.user = {"sub": "u-9", "preferred_username": "mallory", "email": "m@example.org"}
    if tamper == "wrong key":
        provider.sign_key = "another-secret-of-32-bytes-long!"
    elif tamper == "other audience":
        provider.token_overrides = {"aud": "another-site"}
    elif tamper == "other issuer":
        provider.token_overrides = {"iss": "https://evil.example"}
    else:
        provider.token_overrides = {"exp": int(time.time()) - 60}
    client = Client()
    refused = sign_in(client)
    assert refused.status_code == 302 and refused["Location"] == "/accounts/login/?sso=failed"
    assert not User.objects.filter(username="mallory").exists()
    page = client.get(refused["Location"])
    assert 'id="sso-failed"' in page.content.decode() and "ask your admin" in page.content.decode()
    assert client.get("/models/").status_code == 302  # still logged out


def test_without_configuration_there_is_no_single_sign_on(client):
    assert client.get("/oidc/authenticate/").status_code == 404
    assert client.get("/oidc/callback/?code=x&state=y").status_code == 404
    assert 'id="sso-login"' not in client.get("/accounts/login/").content.decode()
