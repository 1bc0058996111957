"""The whole thin path through the REST API on the real stack: Postgres, Redis, a Celery
worker running child processes, and Channels websockets."""
from __future__ import annotations

import asyncio
import io
import json
import random
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from channels.testing import WebsocketCommunicator
from django.test import Client

from digits_site.asgi import application
from models_app.models import Metric
from tests.conftest import wait_for_status
from tests.imagegen import shape_image

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


async def _first_metrics_message(job_id: int, cookie: str, timeout: float) -> dict:
    communicator = WebsocketCommunicator(
        application, f"/ws/jobs/{job_id}/", headers=[(b"cookie", cookie.encode()), (b"origin", b"http://testserver")]
    )
    connected, _ = await communicator.connect()
    assert connected, "websocket refused a logged-in user"
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            message = await communicator.receive_json_from(timeout=deadline - time.monotonic())
            if message.get("type") == "metrics" and message["points"]:
                return message
    finally:
        await communicator.disconnect()
    raise AssertionError("no live metrics message")


def test_dataset_model_classify_download(celery_worker_process, api, owner, shapes_folder, tmp_path):
    started = time.monotonic()
    # 2. Dataset from a server folder: 3 classes x 100 images, 20% validation.
    response = api.post(
        "/api/datasets/",
        {"name": "shapes", "folder": str(shapes_folder), "image_width": 28, "image_height": 28, "val_percent": 20},
        format="json",
    )
    assert response.status_code == 201, response.content
    dataset_id = response.json()["id"]
    dataset = wait_for_status(api, f"/api/datasets/{dataset_id}/", {"done", "error"})
    assert dataset["job"]["status"] == "done", dataset["job"]
    assert dataset["labels"] == ["circle", "square", "triangle"]
    assert dataset["counts"] == {"train": 240, "val": 60}
    assert dataset["class_counts"] == {"train": [80, 80, 80], "val": [20, 20, 20]}
    dataset_seconds = time.monotonic() - started

    # 3. Model: LeNet, SGD; watch it live over the websocket.
    response = api.post(
        "/api/models/",
        {"name": "lenet-shapes", "dataset": dataset_id, "network": "lenet", "epochs": 6, "batch_size": 16, "learning_rate": 0.01},
        format="json",
    )
    assert response.status_code == 201, response.content
    model_id = response.json()["id"]
    browser = Client()
    browser.force_login(owner)
    cookie = f"sessionid={browser.cookies['sessionid'].value}"
    live = asyncio.run(_first_metrics_message(model_id, cookie, timeout=120))
    assert {p["name"] for p in live["points"]} & {"train_loss", "lr"}

    model = wait_for_status(api, f"/api/models/{model_id}/", {"done", "error"})
    assert model["job"]["status"] == "done", model["job"]
    train_seconds = model["job"]["duration_seconds"]
    # 4. Timeline and snapshots: one per epoch.
    assert [e["status"] for e in model["job"]["timeline"]] == ["initialized", "queued", "running", "done"]
    assert [s["epoch"] for s in model["snapshots"]] == [1, 2, 3, 4, 5, 6]
    final_accuracy = model["snapshots"][-1]["val_accuracy"]
    assert final_accuracy >= 0.9, model["snapshots"]

    metrics = api.get(f"/api/models/{model_id}/metrics/").json()
    steps_per_epoch = -(-240 // 16)
    assert len(metrics["train_loss"]) == 6 * steps_per_epoch
    assert len(metrics["val_accuracy"]) == 6
    assert Metric.objects.filter(model_id=model_id, name="lr").count() == 6 * steps_per_epoch
    assert metrics["train_loss"][-1]["value"] < metrics["train_loss"][0]["value"]

    # 5. Classify one new image of each class with the latest snapshot.
    rng = random.Random(1234)
    server_top1 = {}
    for kind in ("circle", "square", "triangle"):
        path = tmp_path / f"{kind}.png"
        shape_image(kind, rng).save(path)
        with path.open("rb") as fh:
            response = api.post(f"/api/models/{model_id}/classify/", {"image": fh}, format="multipart")
        assert response.status_code == 200, response.content
        predictions = response.json()["predictions"]
        assert len(predictions) == 3
        assert abs(sum(p["probability"] for p in predictions) - 1) < 1e-4
        server_top1[kind] = predictions[0]["label"]
    assert server_top1 == {"circle": "circle", "square": "square", "triangle": "triangle"}

    # 6. Download, unpack, and run the standalone script: same top-1 as the server.
    response = api.get(f"/api/models/{model_id}/download/")
    assert response.status_code == 200
    assert response["Content-Disposition"].endswith('.tar.gz"')
    archive = b"".join(response.streaming_content)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
        tar.extractall(tmp_path / "export", filter="data")
    assert {"model.pt", "network.py", "imaging.py", "classify.py", "labels.txt", "mean.npy", "info.json"} <= names
    folder = next((tmp_path / "export").iterdir())
    info = json.loads((folder / "info.json").read_text())
    assert info["epoch"] == 6 and info["labels"] == ["circle", "square", "triangle"]
    images = [str(tmp_path / f"{k}.png") for k in ("circle", "square", "triangle")]
    # A clean interpreter in the export folder: it must not import this project.
    out = subprocess.run(
        [sys.executable, "-I", str(folder / "classify.py"), *images, "--json"],
        cwd=folder, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    script_top1 = {Path(r["image"]).stem: r["predictions"][0]["label"] for r in map(json.loads, out.stdout.splitlines())}
    assert script_top1 == server_top1

    # 7. The console lists both, newest first.
    jobs = api.get("/api/jobs/").json()["results"]
    assert [j["id"] for j in jobs[:2]] == [model_id, dataset_id]
    assert all(j["duration_seconds"] > 0 for j in jobs[:2])
    print(
        f"\nE2E: dataset build {dataset_seconds:.1f}s; training 6 epochs {train_seconds:.1f}s; "
        f"final val accuracy {final_accuracy:.3f}; total {time.monotonic() - started:.1f}s"
    )
