"""Abort, delete, divergence and waiting on a dataset, through the real worker."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.conftest import wait_for_status
from workers.models import Job

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return [p for p in pids if p != os.getpid()]


def create_dataset(api, folder) -> int:
    response = api.post("/api/datasets/", {"name": "shapes", "folder": str(folder), "val_percent": 20}, format="json")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def create_model(api, dataset_id: int, **extra) -> int:
    body = {"name": "m", "dataset": dataset_id, "epochs": 2, "batch_size": 16, **extra}
    response = api.post("/api/models/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def wait_until(predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_model_waits_for_building_dataset_then_abort_stops_the_process(celery_worker_process, api, shapes_folder):
    dataset_id = create_dataset(api, shapes_folder)
    # Created at once, while the dataset may still be building: training waits for it.
    model_id = create_model(api, dataset_id, epochs=500)
    spec = str(Job.objects.get(pk=model_id).directory / "spec.json")
    wait_until(lambda: api.get(f"/api/models/{model_id}/metrics/").json().get("train_loss"))
    assert api.get(f"/api/datasets/{dataset_id}/").json()["job"]["status"] == "done"
    assert processes_mentioning(spec), "the training child should be running"

    aborted_at = time.monotonic()
    assert api.post(f"/api/models/{model_id}/abort/").status_code == 200
    wait_until(lambda: not processes_mentioning(spec), timeout=15)
    stop_seconds = time.monotonic() - aborted_at
    data = api.get(f"/api/models/{model_id}/").json()
    assert data["job"]["status"] == "aborted"
    assert [e["status"] for e in data["job"]["timeline"]][-2:] == ["running", "aborted"]
    assert stop_seconds < 10
    print(f"\nabort: training process group gone {stop_seconds:.2f}s after the API call")
    # Aborting again is a clear 400.
    response = api.post(f"/api/models/{model_id}/abort/")
    assert response.status_code == 400 and "already aborted" in response.json()["detail"]


def test_diverging_training_errors_with_advice(celery_worker_process, api, shapes_folder):
    """A run whose loss diverges says where and with which learning rate, keeps its curve
    up to there, and logs it; a healthy run logs one line per validation."""
    import re

    dataset_id = create_dataset(api, shapes_folder)
    model_id = create_model(api, dataset_id, learning_rate=10, epochs=5)
    healthy_id = create_model(api, dataset_id, epochs=2)
    data = wait_for_status(api, f"/api/models/{model_id}/", {"done", "error"})
    assert data["job"]["status"] == "error"
    error = data["job"]["error"]
    assert re.match(r"Loss became (NaN|infinite|\S+ \(it started at \S+\)) at epoch \d+\.\d\d \(iteration \d+, learning rate 10\): "
                    r"training diverged\. Try decreasing the learning rate", error), error
    assert "No snapshot was made before it." in error or "is kept: resume from it" in error
    points = api.get(f"/api/models/{model_id}/metrics/").json()["train_loss"]
    failed_at = int(re.search(r"iteration (\d+)", error).group(1))
    assert points and all(p["iteration"] < failed_at for p in points)  # the curve up to the divergence
    log = b"".join(api.get(f"/api/jobs/{model_id}/log/").streaming_content).decode()
    assert "Loss became" in log
    healthy = wait_for_status(api, f"/api/models/{healthy_id}/", {"done", "error"})
    assert healthy["job"]["status"] == "done", healthy["job"]
    text = b"".join(api.get(f"/api/jobs/{healthy_id}/log/").streaming_content).decode()
    lines = [line for line in text.splitlines() if "val accuracy" in line]
    assert len(lines) == 2 and re.search(r"epoch 2\.00/2 +iteration 30/30 +train loss [\d.]+ +val loss [\d.]+ +val accuracy [\d.]+% +"
                                         r"lr [\d.e-]+ +\d+ images/s +ETA", lines[-1]), lines


def test_deleting_a_running_model_stops_it_and_removes_its_files(celery_worker_process, api, shapes_folder):
    dataset_id = wait_for_status(api, f"/api/datasets/{create_dataset(api, shapes_folder)}/", {"done"})["id"]
    model_id = create_model(api, dataset_id, epochs=500)
    directory = Job.objects.get(pk=model_id).directory
    spec = str(directory / "spec.json")
    wait_until(lambda: processes_mentioning(spec))
    assert api.delete(f"/api/models/{model_id}/").status_code == 204
    assert api.get(f"/api/models/{model_id}/").status_code == 404
    wait_until(lambda: not processes_mentioning(spec), timeout=15)
    wait_until(lambda: not directory.exists(), timeout=10)


def test_a_dataset_deleted_before_its_build_starts_ends_quietly(celery_worker_process, api, shapes_folder):
    """The build's message reaches the worker after the dataset is gone: the task ends with
    a log line, not a Job.DoesNotExist traceback."""
    import signal

    worker = celery_worker_process.procs["datasets"]
    log_path = celery_worker_process.logs["datasets"]
    offset = log_path.stat().st_size
    os.kill(worker.pid, signal.SIGSTOP)  # the message waits in the queue meanwhile
    try:
        dataset_id = create_dataset(api, shapes_folder)
        assert api.delete(f"/api/datasets/{dataset_id}/").status_code == 204
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while f"job {dataset_id} no longer exists" not in log_path.read_text()[offset:]:
        assert time.monotonic() < deadline, log_path.read_text()[offset:]
        time.sleep(0.2)
    tail = log_path.read_text()[offset:]
    assert "Traceback" not in tail and "DoesNotExist" not in tail
    assert not Job.objects.filter(pk=dataset_id).exists()
