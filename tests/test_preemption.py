"""Graceful stops through the real stack (Celery device workers, the trainer child, the
scheduler): a run that reaches its time limit snapshots and ends "timed out", and resumes;
an urgent job preempts a preemptible one, which snapshots, is requeued and resumes by
itself. In both, every iteration is recorded exactly once: nothing runs twice."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from models_app.models import Metric, Snapshot
from tests.conftest import token_client, wait_for_devices, wait_for_status
from tests.test_distributed import submit, wait_until
from tests.test_model_api import built_dataset
from workers.models import Allocation, Device, Job, JobEvent

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ITERATIONS_PER_EPOCH = 15  # the shapes folder: 240 training images, batch 16
# LeNet runs about 100 steps a second here: long enough that the stop always comes first.
EPOCHS = 100


def iterations(model_id: int) -> list[int]:
    return sorted(Metric.objects.filter(model_id=model_id, name="train_loss").values_list("iteration", flat=True))


@pytest.fixture
def one_device(celery_worker_process) -> Iterator[Device]:
    """Only one of the two CPU devices takes jobs (the other is drained), so that two jobs
    compete for it."""
    first, second = sorted(wait_for_devices(2), key=lambda d: d.index)
    Device.objects.filter(pk=second.pk).update(enabled=False)
    try:
        yield first
    finally:
        Device.objects.filter(pk=second.pk).update(enabled=True)


def test_a_run_stops_at_its_time_limit_with_a_snapshot_and_resumes(one_device, api, shapes_folder):
    dataset_id = built_dataset(api, shapes_folder)
    model_id = submit(api, dataset_id, name="limited", epochs=EPOCHS, snapshot_interval=10, val_interval=10,
                      time_limit_hours=3 / 3600)
    stopped = wait_for_status(api, f"/api/models/{model_id}/", {"timed_out", "done", "error"}, timeout=180)
    assert stopped["job"]["status"] == "timed_out", stopped["job"]
    event = [e for e in stopped["job"]["timeline"] if e["status"] == "timed_out"][-1]
    assert event["message"].startswith("Stopped at its time limit of 3 s: it stopped at a snapshot of its last step.")
    assert any(e["message"].startswith("Asked to stop for its time limit") for e in stopped["job"]["timeline"])
    # The snapshot is at the very step it stopped (not one of the every-10-epochs ones),
    # and every iteration up to it is recorded once.
    done_so_far = iterations(model_id)
    last = Snapshot.objects.filter(model_id=model_id).order_by("-epoch").first()
    assert last is not None and done_so_far == list(range(1, done_so_far[-1] + 1))
    assert round(last.epoch * ITERATIONS_PER_EPOCH) == done_so_far[-1] < EPOCHS * ITERATIONS_PER_EPOCH
    assert Allocation.objects.get(job_id=model_id, attempt=1).outcome == "timed_out"
    assert not Job.objects.get(pk=model_id).stop_request  # the next run starts without it
    # Resumed (with no limit this time): it goes on from that step and completes.
    Job.objects.filter(pk=model_id).update(time_limit_seconds=None)
    assert api.post(f"/api/models/{model_id}/resume/").status_code == 200
    done = wait_for_status(api, f"/api/models/{model_id}/", {"done", "error", "timed_out"}, timeout=300)
    assert done["job"]["status"] == "done", done["job"]
    assert iterations(model_id) == list(range(1, EPOCHS * ITERATIONS_PER_EPOCH + 1))


def test_an_urgent_job_preempts_a_preemptible_one_which_resumes_by_itself(one_device, api, admin_user, shapes_folder):
    dataset_id = built_dataset(api, shapes_folder)
    victim = submit(api, dataset_id, name="victim", epochs=EPOCHS, snapshot_interval=10, val_interval=10, preemptible=True)
    wait_until(lambda: len(iterations(victim)) >= 30, 120, "the victim to be well under way")
    admin = token_client(admin_user)
    urgent = submit(admin, dataset_id, name="urgent", epochs=1, priority="urgent")
    wait_until(lambda: JobEvent.objects.filter(job_id=victim, message__startswith="Preempted by job").exists(), 120,
               "the victim to be preempted")
    preempted = JobEvent.objects.filter(job_id=victim, message__startswith="Preempted by job").get()
    assert f"Preempted by job #{urgent} (urgent priority, {admin_user.username})" in preempted.message
    assert "it stopped at a snapshot of its last step" in preempted.message
    assert preempted.status == "queued"
    assert Allocation.objects.get(job_id=victim, attempt=1).outcome == "preempted"
    assert wait_for_status(admin, f"/api/models/{urgent}/", {"done", "error"})["job"]["status"] == "done"
    # The urgent job ran on the victim's device, after the victim had stopped.
    first = Allocation.objects.get(job_id=victim, attempt=1)
    taken = Allocation.objects.get(job_id=urgent)
    assert taken.device_id == first.device_id and taken.started_at >= first.released_at
    done = wait_for_status(api, f"/api/models/{victim}/", {"done", "error"}, timeout=300)
    assert done["job"]["status"] == "done", done["job"]
    assert any(n.startswith("Resumed from the snapshot at epoch") for n in done["notices"])
    assert iterations(victim) == list(range(1, EPOCHS * ITERATIONS_PER_EPOCH + 1))  # none lost, none twice
    assert Job.objects.get(pk=victim).interruptions == 0  # a preemption is not a failure


def test_a_job_that_is_not_preemptible_is_never_stopped(one_device, api, admin_user, shapes_folder):
    dataset_id = built_dataset(api, shapes_folder)
    steady = submit(api, dataset_id, name="steady", epochs=3)
    wait_until(lambda: Job.objects.get(pk=steady).status == "running", 60, "the job to start")
    admin = token_client(admin_user)
    urgent = submit(admin, dataset_id, name="urgent", epochs=1, priority="urgent")
    queued = admin.get(f"/api/models/{urgent}/").json()["job"]
    assert queued["status"] == "queued" and queued["queue"]["position"] == 1
    assert wait_for_status(api, f"/api/models/{steady}/", {"done", "error"})["job"]["status"] == "done"
    assert not JobEvent.objects.filter(job_id=steady, message__contains="Asked to stop").exists()
    assert wait_for_status(admin, f"/api/models/{urgent}/", {"done", "error"})["job"]["status"] == "done"
