"""S3 credentials: a person's access keys to an object store, kept encrypted and reused by name.

The secret key is encrypted with Fernet (AES-128-CBC with an HMAC, from `cryptography`)
under a key derived from DIGITS_CREDENTIALS_KEY, or from SECRET_KEY when that is not
set. Nothing ever returns the secret to a person: the API and the pages show the name, the
endpoint and the access key id; the build child receives the secret in its environment
(never in its spec file or a log). A key that changed (a new SECRET_KEY) makes the stored
secrets unreadable: their owners are told to enter them again.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import socket
from urllib.parse import urlsplit

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import QuerySet

from workers.errors import Conflict, JobError, NotFound

from .models import S3Credential


def _fernet() -> Fernet:
    secret = getattr(settings, "CREDENTIALS_KEY", "") or settings.SECRET_KEY
    key = hashlib.sha256(b"digits-ng s3 credentials\0" + secret.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def encrypt(secret: str) -> bytes:
    return _fernet().encrypt(secret.encode())


def decrypt(token: bytes | memoryview) -> str:
    try:
        return _fernet().decrypt(bytes(token)).decode()
    except InvalidToken:
        raise JobError(
            "This S3 credential can no longer be read (the server's key changed): delete it and enter it again."
        ) from None


def check_endpoint(url: str) -> None:
    """A person's endpoint may be any public address; one inside the network (private,
    loopback, link-local: a cloud's metadata service) only when an admin listed it in
    DIGITS_S3_ALLOWED_ENDPOINTS, so that nobody can make the server probe its neighbours."""
    if not url:
        return  # AWS S3 itself
    if any(url.startswith(allowed) for allowed in settings.S3_ALLOWED_ENDPOINTS):
        return
    parsed = urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise JobError("The endpoint URL is http(s)://host[:port].", field="endpoint_url")
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(parsed.hostname, parsed.port or 443, proto=socket.IPPROTO_TCP)}
    except (socket.gaierror, UnicodeError, ValueError):
        raise JobError(f"The endpoint's host {parsed.hostname} cannot be found: check the URL.", field="endpoint_url") from None
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not ip.is_global:
            raise JobError(
                f"{parsed.hostname} is an address inside the network ({address}); an admin allows such endpoints "
                "with DIGITS_S3_ALLOWED_ENDPOINTS.", field="endpoint_url",
            )


def credential_list(owner: User) -> QuerySet[S3Credential]:
    return S3Credential.objects.filter(owner=owner)


@transaction.atomic
def credential_create(
    *, owner: User, name: str, access_key_id: str, secret_access_key: str, endpoint_url: str = "", region: str = "",
) -> S3Credential:
    name, access_key_id, endpoint_url = name.strip(), access_key_id.strip(), endpoint_url.strip().rstrip("/")
    if not name:
        raise JobError("Give the credential a name.", field="name")
    if not access_key_id:
        raise JobError("Give the access key id.", field="access_key_id")
    if not secret_access_key:
        raise JobError("Give the secret access key.", field="secret_access_key")
    if endpoint_url and not endpoint_url.startswith(("http://", "https://")):
        raise JobError("The endpoint URL starts with http:// or https://.", field="endpoint_url")
    check_endpoint(endpoint_url)
    try:
        with transaction.atomic():
            return S3Credential.objects.create(
                owner=owner, name=name, access_key_id=access_key_id, endpoint_url=endpoint_url, region=region.strip(),
                secret_encrypted=encrypt(secret_access_key),
            )
    except IntegrityError:
        raise Conflict(f"You already have a credential named {name!r}: pick another name, or delete that one.",
                       field="name") from None


def credential_get(owner: User, name: str) -> S3Credential:
    """The owner's credential of that name (one may use only one's own)."""
    found = S3Credential.objects.filter(owner=owner, name=name.strip()).first()
    if found is None:
        raise NotFound(f"You have no S3 credential named {name!r}; add it first (S3 credentials page, or "
                       "`digits s3 credentials add`).", field="s3_credential")
    return found


def credential_delete(credential: S3Credential) -> None:
    credential.delete()  # its datasets keep their images; they only cannot be built again


def credential_environment(credential: S3Credential) -> dict[str, str]:
    """What a child process needs to reach the store (its environment, not its spec)."""
    return {
        "DIGITS_S3_ACCESS_KEY_ID": credential.access_key_id,
        "DIGITS_S3_SECRET_ACCESS_KEY": decrypt(credential.secret_encrypted),
    }
