"""Job artifacts in S3-compatible object storage (workers/storage.py): workers that share
no folder (each its own DIGITS_JOBS_DIR, as on hosts of their own) meet through the store.
A dataset is built from a bucket on one, published, and fetched by the two device workers
(two "hosts") whose ranks train on it; each snapshot is published as it is written; the
inference worker and the web process fetch what they read; a deleted job's objects go;
the local cache keeps to its limit."""
from __future__ import annotations

import io
import os
import shutil
import tarfile
import time
from pathlib import Path

import pytest

from models_app.models import Snapshot
from tests.conftest import Cluster, subprocess_env, wait_for_devices, wait_for_status
from tests.imagegen import make_shapes_folder
from tests.s3server import S3Server

pytestmark = pytest.mark.django_db(transaction=True)


def keys(server: S3Server, prefix: str) -> list[str]:
    listed = server.client().list_objects_v2(Bucket="artifacts", Prefix=prefix)
    return sorted(item["Key"] for item in listed.get("Contents", []))


@pytest.mark.e2e
def test_workers_without_a_shared_folder_meet_through_the_artifact_store(
    worker_cluster, transactional_db, api, owner, data_root, tmp_path, settings
):
    server = S3Server().start()
    server.client().create_bucket(Bucket="artifacts")
    store = {"DIGITS_ARTIFACTS_S3": "s3://artifacts/digits", "DIGITS_ARTIFACTS_S3_ENDPOINT": server.endpoint,
             "DIGITS_ARTIFACTS_S3_ACCESS_KEY_ID": server.access_key_id,
             "DIGITS_ARTIFACTS_S3_SECRET_ACCESS_KEY": server.secret_access_key}
    hosts = {name: tmp_path / name for name in ("builder", "trainer-a", "trainer-b", "inference", "web")}
    for folder in hosts.values():
        folder.mkdir()
    # This process is the web host: its own job folders, the same store.
    settings.JOBS_DIR = hosts["web"]
    settings.ARTIFACTS_S3, settings.ARTIFACTS_S3_ENDPOINT = store["DIGITS_ARTIFACTS_S3"], server.endpoint
    settings.ARTIFACTS_S3_ACCESS_KEY_ID, settings.ARTIFACTS_S3_SECRET_ACCESS_KEY = server.access_key_id, server.secret_access_key
    from workers import storage

    storage._CLIENT = None  # made again for the test's store
    storage._RECENT.clear()
    worker_cluster.stop()  # the session's workers share one folder: they sit this test out
    cluster = Cluster(subprocess_env(settings.DATABASES["default"]["NAME"]))
    folder = data_root / "artifact-shapes"
    make_shapes_folder(folder, per_class=20)
    try:
        cluster.start("datasets", extra_env={**store, "DIGITS_JOBS_DIR": str(hosts["builder"])})
        cluster.start("inference", queues="inference", extra_env={**store, "DIGITS_JOBS_DIR": str(hosts["inference"])})
        for index, host in enumerate(("trainer-a", "trainer-b")):  # two "hosts", one device each
            cluster.start(f"cpu{index}", device=f"cpu:{index}", extra_env={**store, "DIGITS_JOBS_DIR": str(hosts[host])})
        wait_for_devices(Cluster.DEVICES)

        # The images come from a bucket too (an S3 dataset source).
        images = server.client()
        images.create_bucket(Bucket="images")
        for path in sorted(p for p in folder.rglob("*.png")):
            images.upload_file(str(path), "images", f"shapes/{path.relative_to(folder).as_posix()}")
        credential = api.post("/api/s3/credentials/", {"name": "lab", "endpoint_url": server.endpoint,
                                                        "access_key_id": server.access_key_id,
                                                        "secret_access_key": server.secret_access_key}, format="json")
        assert credential.status_code == 201, credential.content
        response = api.post("/api/datasets/", {"name": "shapes", "source": "s3", "s3_credential": "lab", "s3_bucket": "images",
                                               "s3_prefix": "shapes", "image_width": 28, "image_height": 28}, format="json")
        assert response.status_code == 201, response.content
        dataset = wait_for_status(api, f"/api/datasets/{response.json()['id']}/", {"done", "error"})
        assert dataset["job"]["status"] == "done", dataset["job"]
        built = keys(server, f"digits/{dataset['id']}/")
        assert f"digits/{dataset['id']}/train_db/data.mdb" in built and f"digits/{dataset['id']}/mean.npy" in built
        assert f"digits/{dataset['id']}/job.log" in built
        # The web host has nothing of it until a page reads it.
        assert not (hosts["web"] / str(dataset["id"]) / "train_db").exists()
        image = api.get(f"/api/datasets/{dataset['id']}/images/train/0/")
        assert image.status_code == 200 and (hosts["web"] / str(dataset["id"]) / "train_db" / "data.mdb").exists()

        # Two ranks (DDP, gloo), one on each trainer host: each fetched the dataset it never built.
        model = api.post("/api/models/", {"name": "lenet", "dataset": dataset["id"], "network": "lenet", "epochs": 2,
                                          "snapshot_interval": 1, "batch_size": 16, "devices": 2}, format="json")
        assert model.status_code == 201, model.content
        trained = wait_for_status(api, f"/api/models/{model.json()['id']}/", {"done", "error"}, timeout=300)
        assert trained["job"]["status"] == "done", trained["job"]
        for host in ("trainer-a", "trainer-b"):
            assert (hosts[host] / str(dataset["id"]) / "train_db" / "data.mdb").exists(), host
        stored = keys(server, f"digits/{trained['id']}/")
        filenames = list(Snapshot.objects.filter(model_id=trained["id"]).order_by("epoch").values_list("filename", flat=True))
        assert len(filenames) == 2
        assert not (hosts["web"] / str(trained["id"]) / filenames[0]).exists()  # written on the trainer only
        for filename in filenames:
            assert f"digits/{trained['id']}/{filename}" in stored, stored
        assert f"digits/{trained['id']}/job.log" in stored
        # Classify one of the dataset's images in the inference worker (its own folder): the
        # snapshot comes from the store.
        reply = api.post(f"/api/models/{trained['id']}/classify/", {"image": io.BytesIO(image.content)}, format="multipart")
        assert reply.status_code == 200, reply.content
        assert reply.json()["predictions"][0]["label"] in ("circle", "square", "triangle")
        assert (hosts["inference"] / str(trained["id"]) / filenames[-1]).exists()
        # The download, built by the web host from weights the inference worker wrote and published.
        archive = api.get(f"/api/models/{trained['id']}/download/")
        assert archive.status_code == 200
        with tarfile.open(fileobj=io.BytesIO(b"".join(archive.streaming_content)), mode="r:gz") as tar:
            names = tar.getnames()
        assert any(n.endswith("/model.pt") for n in names) and any(n.endswith("/mean.npy") for n in names)
        # The log page of a job that ran elsewhere.
        log = api.get(f"/api/jobs/{trained['id']}/log/")
        assert log.status_code == 200 and b"epoch" in b"".join(log.streaming_content)
        # Deleting the model deletes its objects.
        # (in a thread of the web process: a delete does not wait on the store)
        assert api.delete(f"/api/models/{trained['id']}/").status_code == 204
        deadline = time.monotonic() + 15
        while keys(server, f"digits/{trained['id']}/") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert keys(server, f"digits/{trained['id']}/") == []
    finally:
        cluster.stop()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
        storage._CLIENT = None
        worker_cluster.start("datasets")
        worker_cluster.start("inference", queues="inference")
        worker_cluster.start_devices()


def test_the_local_cache_keeps_to_its_limit_dropping_the_least_recently_fetched(settings, tmp_path):
    """Fetched files beyond the limit go, the least recently used first; never those of a
    folder a running job has pinned, nor what this fetch just brought, nor files the host
    made itself (not in the index)."""
    from workers import storage

    settings.JOBS_DIR = tmp_path
    settings.ARTIFACTS_S3 = "s3://unused/prefix"  # on (nothing here talks to it)
    files = []
    for job, n in [(7, 0), (8, 1), (7, 2), (7, 3), (7, 4)]:
        path = tmp_path / str(job) / f"f{n}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x" * 1000)
        os.utime(path, (time.time() - 100 + n, time.time() - 100 + n))  # f0 the least recently used
        files.append((str(path), 1000))
    made_here = tmp_path / "7" / "mine.bin"
    made_here.write_bytes(b"y" * 5000)
    storage._remember(files)
    with storage.pinned([tmp_path / "8"]):  # a job running here reads job 8's folder
        removed = storage.trim_cache(limit=2500, keep={str(tmp_path / "7" / "f2.bin")})
    # Oldest first: f0 goes; f1 is pinned and f2 just fetched, so f3 and f4 go: 2000 bytes left.
    assert [Path(p).name for p in removed] == ["f0.bin", "f3.bin", "f4.bin"]
    assert sorted(p.name for p in (tmp_path / "7").iterdir()) == ["f2.bin", "mine.bin"]
    assert (tmp_path / "8" / "f1.bin").exists()
    assert not list((tmp_path / storage.PINS).iterdir())  # the pin went with its block
    assert [Path(p).name for p in storage.trim_cache(limit=1500)] == ["f1.bin"]  # unpinned now, and the oldest
