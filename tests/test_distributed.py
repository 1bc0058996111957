"""Scheduling and distributed training through the real stack: two CPU device workers
(each a Celery worker pinned to its device's queue), the scheduler, gloo DDP across two
worker processes, a killed worker, and a redelivered message."""
from __future__ import annotations

import signal
import time

import psutil
import pytest
from django.conf import settings

from models_app.models import Metric
from workers.tasks import job_rank_task
from tests.conftest import wait_for_devices, wait_for_status
from tests.test_model_api import built_dataset
from workers.models import Allocation, Job, JobEvent

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def submit(api, dataset_id: int, **extra) -> int:
    body = {"name": "m", "dataset": dataset_id, "epochs": 2, "batch_size": 16, "seed": 3, **extra}
    response = api.post("/api/models/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def losses(model_id: int) -> list[tuple[int, float]]:
    return list(Metric.objects.filter(model_id=model_id, name="train_loss").order_by("iteration").values_list("iteration", "value"))


def wait_until(condition, timeout: float = 120, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def children_running(model_id: int) -> list[psutil.Process]:
    """Training processes of this job still alive on this machine."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        # This session's job folder: another suite on the machine may have a job of that id.
        if "models_app.training.train" in cmdline and f"{settings.JOBS_DIR}/{model_id}/" in cmdline:
            found.append(proc)
    return found


def test_two_rank_ddp_matches_one_rank_and_redelivery_is_ignored(celery_worker_process, api, shapes_folder):
    dataset_id = built_dataset(api, shapes_folder)
    single = wait_for_status(api, f"/api/models/{submit(api, dataset_id)}/", {"done", "error"})
    double = wait_for_status(api, f"/api/models/{submit(api, dataset_id, devices=2)}/", {"done", "error"})
    assert single["job"]["status"] == double["job"]["status"] == "done", (single["job"], double["job"])
    assert len(single["job"]["devices"]) == 1 and sorted(double["job"]["devices"]) == sorted(
        d.label for d in wait_for_devices(2)
    )
    running = [e for e in double["job"]["timeline"] if e["status"] == "running"][-1]
    assert "2 ranks meet at" in running["message"]
    # The same global batch (16 = 2 x 8) gives the same curve: every iteration, within
    # the rounding of summing in another order.
    one, two = losses(single["id"]), losses(double["id"])
    assert [i for i, _ in one] == [i for i, _ in two] == list(range(1, 31))
    for (i, a), (_, b) in zip(one, two):
        assert abs(a - b) <= 1e-3 * max(1.0, abs(a)), (i, a, b)
    val = {m["id"]: Metric.objects.filter(model_id=m["id"], name="val_accuracy").order_by("iteration").last().value for m in (single, double)}
    assert abs(val[single["id"]] - val[double["id"]]) <= 0.02
    # Both ranks ran, and only rank 0 reported: one point per iteration.
    ranks = Allocation.objects.filter(job_id=double["id"]).order_by("rank")
    assert [(a.rank, a.world_size, a.outcome) for a in ranks] == [(0, 2, "done"), (1, 2, "done")]
    assert all(a.started_at and a.released_at for a in ranks)

    # A redelivered message for a rank that already ran does nothing.
    events = JobEvent.objects.filter(job_id=double["id"]).count()
    rank0 = ranks[0]
    job_rank_task.apply_async(args=[rank0.pk], queue=rank0.device.queue)
    log = celery_worker_process.logs[rank0.device.worker.split("@")[0]]
    wait_until(lambda: f"allocation {rank0.pk} was already started or released" in log.read_text(), 30, "the ignored message")
    assert JobEvent.objects.filter(job_id=double["id"]).count() == events
    assert Job.objects.get(pk=double["id"]).status == "done"
    assert Allocation.objects.filter(job_id=double["id"]).count() == 2


def test_two_jobs_share_the_devices_and_a_gang_job_waits_for_both(celery_worker_process, api, shapes_folder):
    dataset_id = built_dataset(api, shapes_folder)
    a = submit(api, dataset_id, name="a", epochs=40)
    b = submit(api, dataset_id, name="b", epochs=4)
    wait_until(lambda: Allocation.objects.filter(job_id__in=[a, b], started_at__isnull=False).count() == 2, what="both running")
    # Both devices busy: a 2-device job waits and says why.
    gang = submit(api, dataset_id, name="gang", devices=2, epochs=1)
    waiting = api.get(f"/api/models/{gang}/").json()["job"]
    assert waiting["status"] == "queued" and waiting["queue"]["position"] == 1
    assert waiting["queue"]["reason"] == "Waiting for 2 devices; 0 free; 0 jobs ahead."
    wait_for_status(api, f"/api/models/{b}/", {"done"})
    # b's device is free, a still runs: the gang job holds nothing while it waits.
    if Job.objects.get(pk=a).status == "running":
        time.sleep(1.5)
        now = api.get(f"/api/models/{gang}/").json()["job"]
        if Job.objects.get(pk=a).status == "running":
            assert now["status"] == "queued" and now["queue"]["reason"] == "Waiting for 2 devices; 1 free; 0 jobs ahead."
            assert not Allocation.objects.filter(job_id=gang).exists()
    done = wait_for_status(api, f"/api/models/{gang}/", {"done", "error"}, timeout=240)
    assert done["job"]["status"] == "done", done["job"]
    first_a, first_b = (Allocation.objects.get(job_id=j) for j in (a, b))
    # a and b ran at the same time, on different devices; the gang job only after both.
    assert first_a.device_id != first_b.device_id
    assert first_a.started_at < first_b.released_at and first_b.started_at < first_a.released_at
    gang_start = min(x.started_at for x in Allocation.objects.filter(job_id=gang))
    assert gang_start >= max(first_a.released_at, first_b.released_at)


def test_a_killed_worker_leads_to_a_resumed_completed_job(celery_worker_process, api, shapes_folder):
    """kill -9 the worker of rank 1 of a 2-rank job: its child dies with it, rank 0 stops
    instead of hanging, the job is requeued and, once the worker is back, resumes from its
    last snapshot and completes with every iteration recorded once."""
    cluster = celery_worker_process
    dataset_id = built_dataset(api, shapes_folder)
    model_id = submit(api, dataset_id, name="victim", devices=2, epochs=60, snapshot_interval=2, val_interval=2)
    wait_until(lambda: api.get(f"/api/models/{model_id}/").json()["snapshots"], 180, "the first snapshot")
    rank1 = Allocation.objects.select_related("device").get(job_id=model_id, rank=1)
    cluster.kill(rank1.device.worker.split("@")[0])
    # No rank is left running: the killed worker's child at once, rank 0 once it notices.
    wait_until(lambda: not children_running(model_id), 60, "every rank to stop")
    wait_until(lambda: Job.objects.get(pk=model_id).status == "queued", 30, "the job to be requeued")
    interrupted = JobEvent.objects.filter(job_id=model_id, status="queued").order_by("-at").first()
    assert interrupted.message.startswith("Interrupted: ") and "Requeued to resume from the snapshot at epoch" in interrupted.message
    cluster.start_devices()
    done = wait_for_status(api, f"/api/models/{model_id}/", {"done", "error"}, timeout=300)
    assert done["job"]["status"] == "done", done["job"]
    assert any(n.startswith("Resumed from the snapshot at epoch") for n in done["notices"])
    iterations = list(Metric.objects.filter(model_id=model_id, name="train_loss").values_list("iteration", flat=True))
    assert sorted(iterations) == list(range(1, 60 * 15 + 1))
    attempts = sorted(set(Allocation.objects.filter(job_id=model_id).values_list("attempt", flat=True)))
    assert len(attempts) >= 2
    assert Allocation.objects.filter(job_id=model_id, attempt=attempts[-1], outcome="done").count() == 2


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "terminated"])
def test_a_killed_pool_process_requeues_and_resumes_its_job(celery_worker_process, api, shapes_folder, how):
    """kill -9 (or terminate) only the Celery pool process that runs a 1-rank job (its
    worker lives on): Celery requeues the message, and the redelivered message (or the
    heartbeat, whichever comes first) sees that the rank's process is gone, so the job is
    requeued from its last snapshot and completes, instead of staying "running" with its
    device busy for good. Terminated, the rank gives its device back itself as lost."""
    dataset_id = built_dataset(api, shapes_folder)
    model_id = submit(api, dataset_id, name="pool-victim", epochs=40, snapshot_interval=2, val_interval=2)
    wait_until(lambda: api.get(f"/api/models/{model_id}/").json()["snapshots"], 180, "the first snapshot")
    allocation = Allocation.objects.select_related("device").get(job_id=model_id, attempt=1)
    pool = psutil.Process(allocation.pid)
    worker_main = pool.parent()
    assert "celery" in " ".join(worker_main.cmdline()) and children_running(model_id)
    # The training child was forked from the device worker's pre-imported zygote, and yet
    # it must die with the pool process that asked for it.
    assert "workers.zygote" in " ".join(children_running(model_id)[0].parent().cmdline())
    pool.send_signal(how)
    wait_until(lambda: not children_running(model_id), 30, "the training child to die with its pool process")
    wait_until(
        lambda: JobEvent.objects.filter(job_id=model_id, status="queued", message__startswith="Interrupted: ").exists(),
        30, "the job to be requeued",
    )
    interrupted = JobEvent.objects.filter(job_id=model_id, message__startswith="Interrupted: ").get()
    assert f"pid {allocation.pid}" not in interrupted.message  # rank wording, not a raw pid
    assert ("was killed" if how == signal.SIGKILL else "was stopped") in interrupted.message
    assert "Requeued to resume from the snapshot at epoch" in interrupted.message
    assert Allocation.objects.get(pk=allocation.pk).outcome == "lost"
    done = wait_for_status(api, f"/api/models/{model_id}/", {"done", "error"}, timeout=300)
    assert done["job"]["status"] == "done", done["job"]
    assert worker_main.is_running()  # the worker itself was never restarted
    iterations = list(Metric.objects.filter(model_id=model_id, name="train_loss").values_list("iteration", flat=True))
    assert sorted(iterations) == list(range(1, 40 * 15 + 1))
