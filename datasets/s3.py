"""S3-compatible object stores (AWS S3, MinIO, Ceph, moto...): what a dataset's S3 source
and the `digits s3 upload` command need, through boto3. No Django here: the build child
and the CLI import it too.

The layout is DIGITS': under a prefix, one "subfolder" (key prefix) per class,
`prefix/<class>/<image>`; a split of its own under another prefix, laid out alike.
Every failure becomes an `S3Error` whose message says what to check: the endpoint (not
reachable), the credential (unknown key id, wrong secret, access denied), the bucket (does
not exist) or the prefix (nothing under it).
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".pbm", ".pnm", ".gif", ".webp", ".tif", ".tiff"})
# An object larger than this is not an image anyone meant to train on: reported, not fetched.
MAX_OBJECT_BYTES = 256 << 20


class S3Error(Exception):
    """A store that cannot be used as asked, with what to do about it; `what` is the part
    to check: "endpoint", "credential", "bucket" or "prefix"."""

    def __init__(self, message: str, what: str = "prefix") -> None:
        super().__init__(message)
        self.what = what


@dataclass(frozen=True)
class Store:
    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    region: str = ""
    connect_timeout: float = 5.0
    read_timeout: float = 30.0

    @property
    def where(self) -> str:
        return self.endpoint_url or "AWS S3"

    @property
    def key_hint(self) -> str:
        """The access key id as messages show it: enough to recognise, not to reuse."""
        key = self.access_key_id
        return f"{key[:4]}…{key[-2:]}" if len(key) > 8 else "…"

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(
            connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
            retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=32,
            # Self-hosted stores rarely have a DNS name per bucket: path-style addresses.
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
        )
        return boto3.client(
            "s3", endpoint_url=self.endpoint_url or None, aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key, region_name=self.region or "us-east-1", config=config,
        )


def describe(exc: BaseException, store: Store, bucket: str) -> S3Error:
    """An S3Error saying what went wrong in words a person can act on."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(exc, S3Error):
        return exc
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchBucket", "404", "NotFound"):
            return S3Error(f"The bucket {bucket!r} does not exist at {store.where}: check its name, or create it.", "bucket")
        if code in ("InvalidAccessKeyId",):
            return S3Error(f"{store.where} does not know the access key id {store.key_hint}: check the credential.",
                           "credential")
        if code in ("SignatureDoesNotMatch",):
            return S3Error(f"The secret key does not match the access key id {store.key_hint} at {store.where}: "
                           "enter the credential again.", "credential")
        if code in ("AccessDenied", "403", "AllAccessDisabled"):
            return S3Error(f"Access to the bucket {bucket!r} at {store.where} is denied to this credential: ask for read "
                           "(and list) permission on it.", "credential")
        return S3Error(f"{store.where} refused the request on bucket {bucket!r}: {code or exc}.", "bucket")
    if isinstance(exc, NoCredentialsError):
        return S3Error("No S3 credential was given: choose one.", "credential")
    if isinstance(exc, (EndpointConnectionError, ConnectionError, TimeoutError)) or type(exc).__module__.startswith(
        ("botocore", "urllib3")
    ):
        return S3Error(f"Cannot reach the S3 endpoint {store.where} ({type(exc).__name__}: {exc}). Check its URL and "
                       "that it is running, then try again.", "endpoint")
    return S3Error(f"S3 at {store.where}: {type(exc).__name__}: {exc}", "endpoint")


def normal_prefix(prefix: str) -> str:
    """`a/b` and `/a/b/` alike: `a/b/` (empty stays empty: the whole bucket)."""
    prefix = prefix.strip().strip("/")
    return prefix + "/" if prefix else ""


def unsafe_key(key: str) -> str:
    """Why a key cannot be stored at its own path under a folder ("" when it can): an
    absolute path, `.` or `..` parts, empty parts or backslashes could lead elsewhere."""
    parts = key.split("/")
    if key.startswith("/") or "\\" in key or "\x00" in key:
        return "an absolute path or a backslash in its key"
    if any(part in ("", ".", "..") for part in parts):
        return "an empty, `.` or `..` part in its key"
    return ""


def list_objects(client: Any, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
    """(key, size) of every object under the prefix."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            yield item["Key"], int(item["Size"])


def class_objects(
    store: Store, bucket: str, prefix: str, *, enough_classes: int = 0,
) -> tuple[dict[str, list[tuple[str, int]]], list[dict[str, str]]]:
    """The images under `prefix`, by class subfolder; and the objects left out (not in a
    class subfolder, too large, a key that is no safe path), each with the reason. With
    `enough_classes`, stops listing once that many classes have an image (a quick check).
    Raises S3Error."""
    prefix = normal_prefix(prefix)
    classes: dict[str, list[tuple[str, int]]] = {}
    skipped: list[dict[str, str]] = []
    try:
        client = store.client()
        for key, size in list_objects(client, bucket, prefix):
            if enough_classes and len(classes) >= enough_classes:
                break
            parts = key[len(prefix):].split("/")
            if key.endswith("/") or PurePosixPath(key).suffix.lower() not in IMAGE_SUFFIXES:
                continue  # folder markers and other files, as a folder source ignores them
            if unsafe_key(key):
                skipped.append({"path": key, "reason": f"not fetched: {unsafe_key(key)}"})
            elif len(parts) < 2:
                skipped.append({"path": key, "reason": "not in a class subfolder"})
            elif size > MAX_OBJECT_BYTES:
                skipped.append({"path": key, "reason": f"{size >> 20} MiB: larger than {MAX_OBJECT_BYTES >> 20} MiB"})
            else:
                classes.setdefault(parts[0], []).append((key, size))
    except Exception as exc:  # noqa: BLE001 - every failure is said in words (describe)
        raise describe(exc, store, bucket) from exc
    return classes, skipped


def check_source(store: Store, bucket: str, prefix: str) -> list[str]:
    """Before a dataset is queued: the bucket can be read with this credential and holds at
    least two class subfolders of images under the prefix (listing stops there: a bucket of
    millions answers as fast). Returns those classes."""
    classes, _ = class_objects(store, bucket, prefix, enough_classes=2)
    where = f"s3://{bucket}/{normal_prefix(prefix)}"
    if not classes:
        raise S3Error(f"No images in class subfolders under {where} (DIGITS' layout: {where}<class>/<image>).")
    if len(classes) < 2:
        raise S3Error(f"{where} has one class subfolder ({next(iter(classes))}); a classification dataset needs two.")
    return sorted(classes)


def download(
    store: Store, bucket: str, keys: list[tuple[str, int]], root: Path, *, threads: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, str]]:
    """Fetch the objects into `root`/<key>, `threads` at a time. An object that vanished or
    cannot be read is reported (returned, with its key); the endpoint going away or a
    credential refused stops everything with an S3Error."""
    client = store.client()
    problems: list[dict[str, str]] = []
    lock = threading.Lock()
    done = 0

    def fetch(key: str) -> None:
        nonlocal done
        from botocore.exceptions import ClientError

        if unsafe_key(key):  # class_objects left these out; never written outside `root`
            raise S3Error(f"The key {key!r} is not a safe path: {unsafe_key(key)}.", "prefix")
        target = root / key
        partial = target.with_name(target.name + ".part")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            body = client.get_object(Bucket=bucket, Key=key)["Body"]
            with partial.open("wb") as out:
                for piece in iter(lambda: body.read(1 << 20), b""):
                    out.write(piece)
            os.replace(partial, target)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            partial.unlink(missing_ok=True)
            with lock:  # `a.png` and `a.png/b.png` cannot both be files
                problems.append({"path": key, "reason": "its path clashes with another key's"})
        except OSError as exc:
            if type(exc).__module__.startswith(("botocore", "urllib3")) or isinstance(exc, (ConnectionError, TimeoutError)):
                partial.unlink(missing_ok=True)
                raise describe(exc, store, bucket) from exc
            partial.unlink(missing_ok=True)
            raise S3Error(f"Could not store {key} in the build folder ({exc.strerror or exc}); the disk may be full.",
                          "disk") from exc
        except ClientError as exc:
            partial.unlink(missing_ok=True)
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in ("NoSuchKey", "404", "InvalidObjectState"):
                raise describe(exc, store, bucket) from exc
            with lock:
                problems.append({"path": key, "reason": f"could not be fetched ({code})"})
        except Exception as exc:
            partial.unlink(missing_ok=True)
            raise describe(exc, store, bucket) from exc
        with lock:
            done += 1
            if progress is not None:
                progress(done, len(keys))

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pending = {pool.submit(fetch, key) for key, _ in keys}
        while pending:
            finished, pending = wait(pending, timeout=1.0, return_when=FIRST_EXCEPTION)
            failed = next((f for f in finished if f.exception() is not None), None)
            if failed is not None:
                for future in pending:
                    future.cancel()
                raise failed.exception()  # type: ignore[misc]
    return problems
