"""`digits s3 upload`: put a local folder into an S3-compatible bucket (DIGITS'
upload_s3_data.py), on the client side with boto3. The server reads buckets with its own
code (datasets/s3.py); the CLI is installed alone, so it carries this small part itself."""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


class UploadError(Exception):
    pass


def normal_prefix(prefix: str) -> str:
    prefix = prefix.strip().strip("/")
    return prefix + "/" if prefix else ""


def client(endpoint: str, access_key_id: str, secret_access_key: str, region: str = "") -> Any:
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"},
                    max_pool_connections=32, s3={"addressing_style": "path" if endpoint else "auto"})
    return boto3.client("s3", endpoint_url=endpoint or None, aws_access_key_id=access_key_id,
                        aws_secret_access_key=secret_access_key, region_name=region or "us-east-1", config=config)


def _explain(exc: BaseException, where: str, bucket: str) -> UploadError:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        reasons = {
            "NoSuchBucket": f"the bucket {bucket!r} does not exist: create it first",
            "404": f"the bucket {bucket!r} does not exist: create it first",
            "InvalidAccessKeyId": "the access key id is not known there",
            "SignatureDoesNotMatch": "the secret key does not match the access key id",
            "AccessDenied": f"this key may not write to {bucket!r}",
            "403": f"this key may not write to {bucket!r}",
        }
        return UploadError(f"{where}: {reasons.get(code, code or str(exc))}.")
    return UploadError(f"Cannot reach {where} ({type(exc).__name__}: {exc}): check the endpoint URL.")


def upload_folder(
    s3: Any, where: str, bucket: str, prefix: str, folder: Path, *, threads: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int]:
    """Every file under `folder` to `prefix`/<its path>; an object already there with the
    same size is kept (so a second run resumes). Returns (uploaded, kept)."""
    prefix = normal_prefix(prefix)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    try:
        s3.head_bucket(Bucket=bucket)
        existing = {
            item["Key"]: int(item["Size"])
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for item in page.get("Contents", [])
        }
    except Exception as exc:  # noqa: BLE001 - said in words
        raise _explain(exc, where, bucket) from exc
    counts = {"uploaded": 0, "kept": 0}
    lock = threading.Lock()

    def put(path: Path) -> None:
        key = prefix + path.relative_to(folder).as_posix()
        kept = existing.get(key) == path.stat().st_size
        if not kept:
            try:
                s3.upload_file(str(path), bucket, key)
            except Exception as exc:  # noqa: BLE001
                raise _explain(exc, where, bucket) from exc
        with lock:
            counts["kept" if kept else "uploaded"] += 1
            if progress is not None:
                progress(counts["uploaded"] + counts["kept"], len(files))

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for future in [pool.submit(put, p) for p in files]:
            future.result()
    return counts["uploaded"], counts["kept"]


def from_environment(endpoint: str | None, access_key_id: str | None, region: str | None) -> tuple[str, str, str, str]:
    """(endpoint, access key id, secret key, region): the options given, else the usual AWS
    environment variables (the secret only from there)."""
    return (endpoint or os.environ.get("AWS_ENDPOINT_URL", ""), access_key_id or os.environ.get("AWS_ACCESS_KEY_ID", ""),
            os.environ.get("AWS_SECRET_ACCESS_KEY", ""), region or os.environ.get("AWS_REGION", ""))
