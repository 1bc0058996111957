"""Job artifacts in an S3-compatible object store, optionally: dataset databases,
snapshots, exports, evaluations and logs, so that workers on several hosts need no shared
folder. Off by default (the job folders under DIGITS_JOBS_DIR are the artifacts, and none
of this costs anything).

    DIGITS_ARTIFACTS_S3=s3://bucket/prefix
    DIGITS_ARTIFACTS_S3_ENDPOINT=http://minio.lan:9000      (empty: AWS)
    DIGITS_ARTIFACTS_S3_ACCESS_KEY_ID=...  DIGITS_ARTIFACTS_S3_SECRET_ACCESS_KEY=...
    DIGITS_ARTIFACTS_CACHE_BYTES=50G                           (what a host keeps of fetched files)

Object keys mirror the job folders: `<prefix>/<job id>/<path in its folder>` (every host
uses the same DIGITS_JOBS_DIR path, on its own disk: some rows store absolute paths). A
job's kind says what it reads (`Kind.inputs`, fetched before its child starts) and what
it makes (`Kind.artifacts`, published before it is marked done); a training run publishes
each snapshot as it is written; pages and the inference worker fetch what they read.

On every host the job folders are then a cache. A file is fetched once (to a temporary
name, then renamed, under a lock per file: two readers never download it twice, and no
reader sees half of one). Beyond DIGITS_ARTIFACTS_CACHE_BYTES the least recently fetched
files go first, except those pinned: the inputs and folder of every job running on this
host (`pinned`), and what the current fetch just brought. Files a host made itself are
never evicted. When the store cannot be reached, what is here is used as it is; what is
missing is a StorageError (503) saying so.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings

from .errors import JobError

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_CLIENT: Any = None
_RECENT: dict[str, float] = {}  # folders checked lately (a page's every image would list the store again)
RECHECK_SECONDS = 30.0
INDEX = ".fetched.json"  # in JOBS_DIR: the files this host fetched, for the cache's limit
PINS = ".pins"  # in JOBS_DIR: one file per (pid, folder) a running job holds
STATE = (INDEX, PINS, ".locks")


class StorageError(JobError):
    """The artifact store cannot give what is asked (503)."""

    status_code = 503


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
                config=Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"},
                              s3={"addressing_style": "path" if endpoint else "auto"}, max_pool_connections=16),
            )
        return _CLIENT


def _jobs_dir() -> Path:
    return Path(settings.JOBS_DIR)


def key_of(path: Path) -> str:
    """The object key of a path under the job folders."""
    relative = Path(path).absolute().relative_to(_jobs_dir().absolute()).as_posix()
    _, prefix = _location()
    return f"{prefix}/{relative}" if prefix else relative


def _path_of(key: str) -> Path:
    _, prefix = _location()
    return _jobs_dir() / (key[len(prefix) + 1:] if prefix else key)


def _listing(path: Path) -> dict[str, int]:
    """{key: size} of the object at `path`, or of every object under it when it is a folder."""
    bucket, _ = _location()
    key = key_of(path)
    found: dict[str, int] = {}
    for prefix in (key.rstrip("/") + "/", key):  # a folder's objects; else the one object
        for page in _client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if item["Key"] == key or item["Key"].startswith(key.rstrip("/") + "/"):
                    found[item["Key"]] = int(item["Size"])
        if found:
            break
    return found


def publish(path: Path) -> int:
    """Upload a file, or every file under a folder, to the store; what is there already,
    the same size, is not sent again (snapshots go as they are written). Returns how many
    were sent. Nothing when the store is off."""
    if not enabled():
        return 0
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
    files = [f for f in files if not f.name.endswith((".tmp", ".part", ".lock"))]
    if not files:
        return 0
    bucket, _ = _location()
    there = _listing(path)
    sent = [f for f in files if there.get(key_of(f)) != f.stat().st_size]
    for file in sent:
        _client().upload_file(str(file), bucket, key_of(file))
    if sent:
        log.info("published %d file(s) of %s to s3://%s", len(sent), path, bucket)
    return len(sent)


def publish_later(path: Path) -> None:
    """Publish once the current transaction has committed, in a thread of its own: no row
    lock is held, and nobody waits on the upload (a failure is logged; the end of the job
    publishes what is missing)."""
    from django.db import transaction

    def run() -> None:
        try:
            publish(path)
        except Exception:  # noqa: BLE001 - logged; published again when the job ends
            log.exception("publishing %s failed; it is published again when its job ends", path)

    if enabled():
        transaction.on_commit(lambda: threading.Thread(target=run, name="artifact-publish", daemon=True).start())


def fetch(path: Path) -> Path:
    """Make sure a file, or a folder and every file under it, is here: what is missing is
    downloaded from the store. Without a store, or for a file that is here, nothing
    happens. The store down: what is here is used, what is not is a StorageError."""
    path = Path(path)
    if not enabled() or path.is_file():
        return path
    now = time.monotonic()
    if now - _RECENT.get(str(path), -RECHECK_SECONDS) < RECHECK_SECONDS and path.exists():
        return path
    try:
        wanted = _listing(path)
    except Exception as exc:  # noqa: BLE001 - the store's own words
        if path.exists():
            log.warning("artifact store unreachable (%s); using what is here of %s", exc, path)
            return path
        raise StorageError(f"{path.name} is not on this host and the artifact store cannot be reached "
                           f"({type(exc).__name__}: {exc}).") from exc
    fetched = []
    for key, size in sorted(wanted.items()):
        target = _path_of(key)
        if target.name.endswith((".tmp", ".part", ".lock")):
            continue
        with _file_lock(target):
            if target.exists() and target.stat().st_size == size:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f"{target.name}.{uuid.uuid4().hex}.part")
            try:
                bucket, _ = _location()
                _client().download_file(bucket, key, str(partial))
                os.replace(partial, target)
            except Exception as exc:  # noqa: BLE001
                raise StorageError(f"Could not fetch {key} from the artifact store ({type(exc).__name__}: {exc}).") from exc
            finally:
                partial.unlink(missing_ok=True)
        fetched.append((str(target), size))
    if fetched:
        log.info("fetched %d file(s) under %s", len(fetched), path)
        _remember(fetched)
        trim_cache(keep={p for p, _ in fetched})
    _RECENT[str(path)] = time.monotonic()
    return path


def remove(path: Path) -> None:
    """Delete one file's object (a snapshot pruned by retention)."""
    if enabled():
        bucket, _ = _location()
        _client().delete_object(Bucket=bucket, Key=key_of(path))


def forget(job_directory: Path) -> None:
    """Delete a job's objects (the job was deleted), in a thread: a delete does not wait
    on the store."""
    if not enabled():
        return

    def run() -> None:
        try:
            bucket, _ = _location()
            keys = [{"Key": key} for key in _listing(job_directory) if key.startswith(key_of(job_directory).rstrip("/") + "/")]
            for start in range(0, len(keys), 1000):
                _client().delete_objects(Bucket=bucket, Delete={"Objects": keys[start : start + 1000]})
        except Exception:  # noqa: BLE001 - the rows are gone; left-over objects are only space
            log.exception("the objects of %s could not be deleted from the artifact store", job_directory)

    threading.Thread(target=run, name="artifact-forget", daemon=True).start()


# -- pins and the cache's limit --------------------------------------------------------


@contextlib.contextmanager
def pinned(folders: list[Path]) -> Iterator[None]:
    """While a job runs on this host, its inputs and its own folder are not evicted."""
    if not enabled():
        yield
        return
    pins = _jobs_dir() / PINS
    pins.mkdir(parents=True, exist_ok=True)
    marks = []
    for folder in folders:
        digest = hashlib.sha1(str(Path(folder).absolute()).encode()).hexdigest()[:16]
        mark = pins / f"{os.getpid()}-{threading.get_ident()}-{digest}"
        mark.write_text(str(Path(folder).absolute()))
        marks.append(mark)
    try:
        yield
    finally:
        for mark in marks:
            mark.unlink(missing_ok=True)


def _pinned_folders() -> list[str]:
    folders = []
    for mark in (_jobs_dir() / PINS).glob("*"):
        pid = int(mark.name.split("-", 1)[0])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark.unlink(missing_ok=True)  # its process is gone
            continue
        except PermissionError:
            pass
        with contextlib.suppress(OSError):
            folders.append(mark.read_text().rstrip("/") + "/")
    return folders


@contextlib.contextmanager
def _file_lock(target: Path) -> Iterator[None]:
    locks = _jobs_dir() / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha1(str(target.absolute()).encode()).hexdigest()[:20]
    with (locks / name).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _index() -> Iterator[dict[str, int]]:
    """The fetched files' index, read and written under an exclusive lock (several
    processes of one host share it)."""
    path = _jobs_dir() / INDEX
    path.parent.mkdir(parents=True, exist_ok=True)
    with (_jobs_dir() / f"{INDEX}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            try:
                index = dict(json.loads(path.read_text()))
            except (OSError, ValueError):
                index = {}
            yield index
            tmp = path.with_name(f"{INDEX}.{uuid.uuid4().hex}.tmp")
            tmp.write_text(json.dumps(index))
            os.replace(tmp, path)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remember(files: list[tuple[str, int]]) -> None:
    with _index() as index:
        index.update({path: size for path, size in files})


def trim_cache(limit: int | None = None, keep: set[str] | None = None) -> list[str]:
    """Remove the least recently fetched files beyond the cache's limit, except pinned ones
    and `keep`. (A process with one open keeps reading it; a later reader fetches it again.)"""
    limit = settings.ARTIFACTS_CACHE_BYTES if limit is None else limit
    keep = keep or set()
    removed: list[str] = []
    with _index() as index:
        present = []
        for path, size in list(index.items()):
            try:
                present.append((os.stat(path).st_mtime, path, size))
            except OSError:
                del index[path]  # gone already
        total = sum(size for _, _, size in present)
        if total > limit:
            pins = _pinned_folders()
            for _, path, size in sorted(present):
                if total <= limit:
                    break
                if path in keep or any(path.startswith(folder) for folder in pins):
                    continue
                Path(path).unlink(missing_ok=True)
                del index[path]
                total -= size
                removed.append(path)
            if total > limit:
                log.warning("artifact cache: %d bytes kept over its %d-byte limit (in use by running jobs)", total, limit)
    if removed:
        _RECENT.clear()  # a folder checked lately may have lost files
        log.info("artifact cache: removed %d least recently fetched file(s) to stay under %d bytes", len(removed), limit)
    return removed
