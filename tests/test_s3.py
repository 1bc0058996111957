"""Datasets from S3-compatible object storage, against a real S3 endpoint (moto's server,
signatures checked): a folder put there with `digits s3 upload`, credentials stored
encrypted and never echoed, a dataset built from the bucket by the real worker and a model
trained on it; a wrong key, a wrong secret and a missing bucket refused with what to fix;
the endpoint going away in the middle of a build fails it with nothing half-written."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client

from datasets.models import Dataset, S3Credential
from tests.conftest import token_client, wait_for_status
from tests.imagegen import make_shapes_folder
from tests.netproxy import TcpProxy
from tests.s3server import S3Server

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def s3() -> Iterator[S3Server]:
    server = S3Server().start()
    yield server
    server.stop()


def digits_s3_upload(server: S3Server, folder: Path, bucket: str, prefix: str, endpoint: str | None = None) -> dict:
    """The CLI, in its own process, with the keys in the environment as AWS tools take them."""
    import json

    env = {**os.environ, "AWS_ACCESS_KEY_ID": server.access_key_id, "AWS_SECRET_ACCESS_KEY": server.secret_access_key}
    out = subprocess.run(
        [sys.executable, "-m", "digits_cli", "s3", "upload", str(folder), "--bucket", bucket, "--prefix", prefix,
         "--endpoint", endpoint or server.endpoint, "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def add_credential(api, server: S3Server, name: str = "lab", **override: str) -> dict:
    body = {"name": name, "endpoint_url": server.endpoint, "access_key_id": server.access_key_id,
            "secret_access_key": server.secret_access_key, **override}
    response = api.post("/api/s3/credentials/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


@pytest.mark.e2e
def test_a_dataset_from_an_s3_bucket_and_a_model_trained_on_it(celery_worker_process, api, owner, teammate, data_root, s3):
    folder = data_root / "s3-shapes"
    make_shapes_folder(folder / "train", per_class=30)
    make_shapes_folder(folder / "val", per_class=8, seed=1)
    (folder / "train" / "circle" / "broken.png").write_bytes(b"not a png")
    (folder / "train" / "stray.png").write_bytes((folder / "train" / "circle" / "circle_0000.png").read_bytes())
    s3.client().create_bucket(Bucket="images")
    sent = digits_s3_upload(s3, folder, "images", "shapes")
    files = sum(1 for p in folder.rglob("*") if p.is_file())
    assert (sent["uploaded"], sent["kept"], sent["prefix"]) == (files, 0, "shapes/")
    again = digits_s3_upload(s3, folder, "images", "shapes")  # a second run resumes: nothing is sent twice
    assert (again["uploaded"], again["kept"]) == (0, files)

    credential = add_credential(api, s3)
    assert "secret_access_key" not in credential and s3.secret_access_key not in str(credential)
    listed = api.get("/api/s3/credentials/").json()
    assert [c["name"] for c in listed["results"]] == ["lab"] and s3.secret_access_key not in str(listed)
    with connection.cursor() as cursor:  # stored encrypted, not as given
        cursor.execute("SELECT secret_encrypted FROM datasets_s3credential")
        (stored,) = cursor.fetchone()
    assert s3.secret_access_key.encode() not in bytes(stored)
    duplicate = api.post("/api/s3/credentials/", {"name": "lab", "access_key_id": "x", "secret_access_key": "y"}, format="json")
    assert duplicate.status_code == 409 and "already have a credential named 'lab'" in duplicate.json()["detail"]

    body = {"name": "from-s3", "source": "s3", "s3_credential": "lab", "s3_bucket": "images", "s3_prefix": "shapes/train",
            "s3_val_prefix": "/shapes/val/", "image_width": 28, "image_height": 28}
    # A teammate cannot read the bucket with someone else's credential.
    theirs = token_client(teammate).post("/api/datasets/", body, format="json")
    assert theirs.status_code == 404 and "You have no S3 credential named 'lab'" in theirs.json()["detail"]
    response = api.post("/api/datasets/", body, format="json")
    assert response.status_code == 201, response.content
    data = wait_for_status(api, f"/api/datasets/{response.json()['id']}/", {"done", "error"})
    assert data["job"]["status"] == "done", data["job"]
    assert data["labels"] == ["circle", "square", "triangle"]
    assert data["counts"] == {"train": 90, "val": 24}  # the broken one left out
    assert (data["s3_credential"], data["s3_prefix"], data["s3_val_prefix"]) == ("lab", "shapes/train/", "shapes/val/")
    reasons = {s["path"]: s["reason"] for s in data["skipped"]}
    assert reasons["shapes/train/stray.png"] == "not in a class subfolder"
    assert reasons["shapes/train/circle/broken.png"].startswith("not a readable image"), reasons
    # The secret went to the build process only: not into its spec, its log or the dataset.
    directory = Dataset.objects.get(pk=data["id"]).directory
    for name in ("spec.json", "job.log"):
        assert s3.secret_access_key not in (directory / name).read_text()
    assert s3.secret_access_key not in str(data)
    assert not (directory / "build.tmp").exists()  # the fetched copies went with the build folder
    page = Client()
    page.force_login(owner)
    shown = page.get(f"/datasets/{data['id']}/").content.decode()
    assert 'id="s3-source">s3://images/shapes/train/<' in shown and "with lab" in shown

    model = api.post("/api/models/", {"name": "lenet", "dataset": data["id"], "network": "lenet", "epochs": 1,
                                      "batch_size": 16}, format="json")
    assert model.status_code == 201, model.content
    trained = wait_for_status(api, f"/api/models/{model.json()['id']}/", {"done", "error"}, timeout=300)
    assert trained["job"]["status"] == "done", trained["job"]
    assert trained["snapshots"]
    shutil.rmtree(folder, ignore_errors=True)


def test_a_wrong_key_a_wrong_secret_and_a_missing_bucket_are_said_on_the_form(api, owner, teammate, s3):
    s3.client().create_bucket(Bucket="images")
    body = {"name": "d", "source": "s3", "s3_bucket": "images", "s3_prefix": "shapes"}
    cases = [
        ({"name": "unknown", "access_key_id": "AKIANOTKNOWN"}, {}, "s3_credential", "does not know the access key id AKIA…WN"),
        ({"name": "wrong-secret", "secret_access_key": "wrong"}, {}, "s3_credential", "The secret key does not match"),
        ({"name": "good"}, {"s3_bucket": "no-such-bucket"}, "s3_bucket", "The bucket 'no-such-bucket' does not exist"),
        ({"name": "empty"}, {}, "s3_prefix", "No images in class subfolders under s3://images/shapes/"),
        ({"name": "nowhere", "endpoint_url": "http://127.0.0.1:9"}, {}, "s3_credential", "Cannot reach the S3 endpoint"),
    ]
    for credential, extra, field, message in cases:
        add_credential(api, s3, **credential)
        response = api.post("/api/datasets/", {**body, "s3_credential": credential["name"], **extra}, format="json")
        assert response.status_code == 400, response.content
        assert list(response.json()["errors"]) == [field] and message in response.json()["detail"], response.json()
    overlap = api.post("/api/datasets/", {**body, "s3_credential": "good", "s3_val_prefix": "shapes/val"}, format="json")
    assert overlap.status_code == 400 and list(overlap.json()["errors"]) == ["s3_val_prefix"]
    assert "overlap" in overlap.json()["detail"]
    assert not Dataset.objects.exists()  # nothing was queued
    missing = api.post("/api/datasets/", {**body, "s3_credential": ""}, format="json")
    assert missing.status_code == 400 and "Choose the S3 credential" in missing.json()["detail"]
    # An endpoint inside the network (a cloud's metadata service, this machine by another
    # name) is refused unless an admin allowed it (the tests allow http://127.0.0.1: only).
    for endpoint in ("http://169.254.169.254", "http://localhost:9000", "http://10.0.0.1:9000"):
        refused = api.post("/api/s3/credentials/", {"name": "inside", "endpoint_url": endpoint, "access_key_id": "k",
                                                    "secret_access_key": "s"}, format="json")
        assert refused.status_code == 400 and list(refused.json()["errors"]) == ["endpoint_url"], refused.json()
        assert "address inside the network" in refused.json()["detail"] and "DIGITS_S3_ALLOWED_ENDPOINTS" in refused.json()["detail"]
    # One's credentials are one's own: another person can neither see nor delete them.
    good = S3Credential.objects.get(name="good")
    stranger = token_client(teammate)
    assert stranger.get("/api/s3/credentials/").json()["count"] == 0
    assert stranger.delete(f"/api/s3/credentials/{good.pk}/").status_code == 404
    page = Client()
    page.force_login(teammate)
    assert page.post(f"/s3/credentials/{good.pk}/delete/").status_code == 404
    assert S3Credential.objects.filter(pk=good.pk).exists()
    deleted = api.delete(f"/api/s3/credentials/{good.pk}/")
    assert deleted.status_code == 204 and not S3Credential.objects.filter(name="good").exists()


def test_keys_that_are_no_safe_path_are_never_written():
    from datasets.s3 import unsafe_key

    for key in ("a/../../etc/x.png", "/etc/x.png", "a//b.png", "a/./b.png", "a\\..\\b.png", "..", "a/b/"):
        assert unsafe_key(key), key
    for key in ("shapes/train/circle/c.png", "a/b..c.png", ".hidden/x.png"):
        assert not unsafe_key(key), key


@pytest.mark.e2e
def test_the_endpoint_going_away_mid_build_fails_it_with_nothing_half_written(celery_worker_process, api, owner, data_root, s3):
    folder = data_root / "s3-many"
    make_shapes_folder(folder, per_class=120)
    s3.client().create_bucket(Bucket="many")
    # The store behind a proxy the test can cut, slowed so that fetching takes seconds.
    with TcpProxy(("127.0.0.1", 0), ("127.0.0.1", s3.port)).start() as proxy:
        endpoint = f"http://127.0.0.1:{proxy.port}"
        digits_s3_upload(s3, folder, "many", "train", endpoint=endpoint)
        add_credential(api, s3, endpoint_url=endpoint)
        response = api.post("/api/datasets/", {"name": "cut", "source": "s3", "s3_credential": "lab", "s3_bucket": "many",
                                               "s3_prefix": "train"}, format="json")
        assert response.status_code == 201, response.content
        proxy.delay = 0.05
        url = f"/api/datasets/{response.json()['id']}/"
        deadline = time.monotonic() + 60
        while not api.get(url).json()["job"].get("eta_seconds"):  # fetching has started and measured its pace
            assert time.monotonic() < deadline, api.get(url).json()["job"]
            time.sleep(0.05)
        job = api.get(url).json()["job"]
        assert 0 < job["progress"] < 1, job
        proxy.cut()
        data = wait_for_status(api, url, {"done", "error"})
    assert data["job"]["status"] == "error", data["job"]
    assert "Cannot reach the S3 endpoint" in data["job"]["error"] and "while fetching 360 objects" in data["job"]["error"]
    directory = Dataset.objects.get(pk=data["id"]).directory
    left = sorted(p.name for p in directory.iterdir())
    assert not [name for name in left if name.endswith("_db") or name == "build.tmp" or name.endswith(".npy")], left
    assert data["counts"] == {}
    shutil.rmtree(folder, ignore_errors=True)
