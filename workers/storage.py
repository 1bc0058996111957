"""Job artifacts in an S3-compatible object store, optionally: dataset databases,
snapshots, exports, evaluations and logs, so that workers on several hosts need no shared
folder. Off by default (the job folders under DIGITS_JOBS_DIR are the artifacts).

    DIGITS_ARTIFACTS_S3=s3://bucket/prefix
    DIGITS_ARTIFACTS_S3_ENDPOINT=http://minio.lan:9000      (empty: AWS)
    DIGITS_ARTIFACTS_S3_ACCESS_KEY_ID=...  DIGITS_ARTIFACTS_S3_SECRET_ACCESS_KEY=...
    DIGITS_ARTIFACTS_CACHE_BYTES=50G                           (what a host keeps of fetched files)

Object keys mirror the job folders: `<prefix>/<job id>/<path in its folder>`. A job's
kind says what it makes (`Kind.artifacts`, published when it is done; a training run
publishes each snapshot as it is written) and what it reads (`Kind.inputs`, fetched before
its child starts); pages and the inference worker fetch what they read the same way. On
every host the job folders are then a cache: a file is fetched once (to a temporary name,
then renamed: a reader never sees half of one), kept while there is room, and the least
recently used fetched files go first once DIGITS_ARTIFACTS_CACHE_BYTES is exceeded (files
a host made itself are never evicted: they are the originals until published).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from django.conf import settings

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_CLIENT: Any = None
_RECENT: dict[str, float] = {}  # folders checked lately (a page's every image would list the store again)
RECHECK_SECONDS = 30.0
INDEX = ".fetched.json"  # in JOBS_DIR: the files this host fetched, for the cache's limit


class StorageError(Exception):
    pass


def enabled() -> bool:
    return bool(getattr(settings, "ARTIFACTS_S3", ""))


def _location() -> tuple[str, str]:
    url = settings.ARTIFACTS_S3
    if not url.startswith("s3://"):
        raise StorageError(f"DIGITS_ARTIFACTS_S3 is s3://bucket/prefix, not {url!r}.")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    return bucket, prefix.strip("/")


def _client() -> Any:
    global _CLIENT
    with _LOCK:
        if _CLIENT is None:
            import boto3
            from botocore.config import Config

            endpoint = settings.ARTIFACTS_S3_ENDPOINT or None
            _CLIENT = boto3.client(
                "s3", endpoint_url=endpoint, region_name=settings.ARTIFACTS_S3_REGION or "us-east-1",
                aws_access_key_id=settings.ARTIFACTS_S3_ACCESS_KEY_ID or None,
                aws_secret_access_key=settings.ARTIFACTS_S3_SECRET_ACCESS_KEY or None,
                config=Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 5, "mode": "standard"},
                              s3={"addressing_style": "path" if endpoint else "auto"}, max_pool_connections=16),
            )
        return _CLIENT


def key_of(path: Path) -> str:
    """The object key of a path under the job folders."""
    relative = Path(path).resolve().relative_to(Path(settings.JOBS_DIR).resolve()).as_posix()
    _, prefix = _location()
    return f"{prefix}/{relative}" if prefix else relative


def publish(path: Path) -> int:
    """Upload a file, or every file under a folder (temporary `.tmp`/`.part` files left
    out), to the store. Returns how many. Nothing when the store is off."""
    if not enabled():
        return 0
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
    files = [f for f in files if not f.name.endswith((".tmp", ".part")) and f.name != INDEX]
    bucket, _ = _location()
    client = _client()
    there: dict[str, int] = {}
    if path.is_dir():  # what is already there, the same size, is not sent again (snapshots sent as written)
        prefix = key_of(path).rstrip("/") + "/"
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            there.update({item["Key"]: int(item["Size"]) for item in page.get("Contents", [])})
    sent = [f for f in files if there.get(key_of(f)) != f.stat().st_size]
    for file in sent:
        client.upload_file(str(file), bucket, key_of(file))
    if sent:
        log.info("published %d file(s) of %s to s3://%s", len(sent), path, bucket)
    return len(sent)


def fetch(path: Path) -> Path:
    """Make sure a file, or a folder and every file under it, is here: what is missing is
    downloaded from the store. Without a store, or when it is all here, nothing happens."""
    path = Path(path)
    if not enabled():
        return path
    now = time.monotonic()
    if now - _RECENT.get(str(path), -RECHECK_SECONDS) < RECHECK_SECONDS and path.exists():
        return path
    bucket, _ = _location()
    client = _client()
    prefix = key_of(path)
    wanted: list[tuple[str, int]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            if key == prefix or key.startswith(prefix.rstrip("/") + "/"):
                wanted.append((key, int(item["Size"])))
    jobs_dir = Path(settings.JOBS_DIR)
    _, root_prefix = _location()
    fetched = []
    for key, size in wanted:
        relative = key[len(root_prefix) + 1:] if root_prefix else key
        target = jobs_dir / relative
        if target.exists() and target.stat().st_size == size:
            os.utime(target)  # recently used: the cache keeps it longer
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + f".{os.getpid()}.part")
        try:
            client.download_file(bucket, key, str(partial))
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        fetched.append((str(target), size))
    if fetched:
        log.info("fetched %d file(s) under %s from s3://%s", len(fetched), path, bucket)
        _remember(fetched)
        trim_cache()
    _RECENT[str(path)] = time.monotonic()
    return path


def forget(job_directory: Path) -> None:
    """Delete a job's objects (the job was deleted)."""
    if not enabled():
        return
    bucket, _ = _location()
    client = _client()
    prefix = key_of(job_directory).rstrip("/") + "/"
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})


def _index_path() -> Path:
    return Path(settings.JOBS_DIR) / INDEX


def _remember(files: list[tuple[str, int]]) -> None:
    with _LOCK:
        index = _read_index()
        index.update({path: size for path, size in files})
        _write_index(index)


def _read_index() -> dict[str, int]:
    try:
        return dict(json.loads(_index_path().read_text()))
    except (OSError, ValueError):
        return {}


def _write_index(index: dict[str, int]) -> None:
    tmp = _index_path().with_name(f"{INDEX}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(index))
    os.replace(tmp, _index_path())


def trim_cache(limit: int | None = None) -> list[str]:
    """Remove the least recently used fetched files beyond the cache's limit. A process
    that has one open keeps reading it (the inode lives on); a later reader fetches it again."""
    limit = settings.ARTIFACTS_CACHE_BYTES if limit is None else limit
    with _LOCK:
        index = _read_index()
        present = []
        for path, size in index.items():
            try:
                present.append((os.stat(path).st_mtime, path, size))
            except OSError:
                continue  # gone already
        total = sum(size for _, _, size in present)
        removed = []
        for _, path, size in sorted(present):
            if total <= limit:
                break
            Path(path).unlink(missing_ok=True)
            total -= size
            removed.append(path)
        _write_index({path: size for _, path, size in present if path not in removed})
    if removed:
        log.info("artifact cache: removed %d least recently used file(s) to stay under %d bytes", len(removed), limit)
    return removed
