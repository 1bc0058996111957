"""A worker that starts again requeues the dataset builds its killed predecessor was
running on this host (Celery would not redeliver their messages for days)."""
from __future__ import annotations

import os
import subprocess
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from tests.factories import make_dataset
from workers.models import Job, JobEvent
from workers.runner import recover_lost_runs

pytestmark = pytest.mark.django_db


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_builds_of_a_lost_process_are_requeued_and_live_ones_kept(owner) -> None:
    lost = make_dataset(owner, name="lost", status="running")
    alive = make_dataset(owner, name="alive", status="running")
    elsewhere = make_dataset(owner, name="elsewhere", status="running")
    now = timezone.now()
    Job.objects.filter(pk=lost.pk).update(runner_host=settings.HOST_NAME, runner_pid=dead_pid(), started_at=now)
    Job.objects.filter(pk=alive.pk).update(runner_host=settings.HOST_NAME, runner_pid=os.getpid(), started_at=now)
    Job.objects.filter(pk=elsewhere.pk).update(runner_host="another-host", runner_pid=dead_pid(), started_at=now)
    assert recover_lost_runs() == 1
    assert Job.objects.get(pk=lost.pk).status == "queued"
    event = JobEvent.objects.filter(job_id=lost.pk, status="queued").get()
    assert event.message.startswith("Interrupted: the worker process running it (pid ")
    assert event.message.endswith("is gone. Building again from the start.")
    assert Job.objects.get(pk=alive.pk).status == "running"
    assert Job.objects.get(pk=elsewhere.pk).status == "running"  # its own host's worker recovers it


def test_a_lost_rank_seen_by_two_detectors_is_requeued_once(owner) -> None:
    """The heartbeat and a redelivered message both find a killed rank's process gone:
    only the one that releases its allocation requeues the job, so the loss counts once."""
    from tests.factories import make_model
    from workers.models import Allocation, Device
    from workers.services import allocation_interrupt

    model = make_model(owner, make_dataset(owner), name="lost-rank", status="running")
    Job.objects.filter(pk=model.pk).update(attempt=1, started_at=timezone.now())
    device = Device.objects.create(uuid="cpu-twice-0", host=settings.HOST_NAME, address="127.0.0.1", kind="cpu", index=0, name="cpu")
    allocation = Allocation.objects.create(
        job_id=model.pk, job_name="lost-rank", owner=owner, device=device, attempt=1, rank=0, world_size=1,
        started_at=timezone.now(), pid=dead_pid(),
    )
    assert allocation_interrupt(allocation, "the heartbeat found its process gone") is True
    assert allocation_interrupt(allocation, "a redelivered message found its process gone") is False
    job = Job.objects.get(pk=model.pk)
    assert (job.status, job.interruptions) == ("queued", 1)
    assert JobEvent.objects.filter(job_id=model.pk, message__startswith="Interrupted: ").count() == 1
    assert Allocation.objects.get(pk=allocation.pk).outcome == "lost"


@pytest.mark.django_db(transaction=True)
def test_two_ranks_lost_together_requeue_their_job_once(owner) -> None:
    """Both ranks of a job say they were lost at the same moment (their host stopping: each
    rank's worker process is terminated): the job is requeued once, its loss counted once.
    The test holds the job's row until both wait for it, so they meet at the same point
    every time (each releasing its own allocation before taking the job let both requeue it)."""
    import threading

    from django.db import connection, transaction

    from tests.factories import make_model
    from workers.models import Allocation, Device
    from workers.services import allocation_interrupt, job_abort

    model = make_model(owner, make_dataset(owner), name="lost-together", status="running")
    Job.objects.filter(pk=model.pk).update(attempt=1, started_at=timezone.now())
    # Devices the session's reaper leaves alone while the test runs (it takes a device never
    # seen, or silent for DEVICE_DEAD_SECONDS, for dead: it would be a third to lose the ranks).
    seen = timezone.now() + timedelta(hours=1)
    allocations = [
        Allocation.objects.create(
            job_id=model.pk, job_name="lost-together", owner=owner, attempt=1, rank=rank, world_size=2,
            device=Device.objects.create(uuid=f"cpu-together-{rank}", host=settings.HOST_NAME, address="127.0.0.1",
                                         kind="cpu", index=rank, name="cpu", last_seen=seen),
            started_at=timezone.now(), pid=dead_pid(),
        )
        for rank in range(2)
    ]
    results: dict[int, bool] = {}
    waiting = threading.Barrier(3)

    def lock_waiters() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")  # else read once per transaction
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            return cursor.fetchone()[0]

    def lose(allocation: Allocation) -> None:
        try:
            waiting.wait()
            results[allocation.rank] = allocation_interrupt(allocation, f"rank {allocation.rank}'s worker was stopped")
        finally:
            connection.close()

    threads = [threading.Thread(target=lose, args=(a,)) for a in allocations]
    with transaction.atomic():
        Job.objects.select_for_update().get(pk=model.pk)
        for thread in threads:
            thread.start()
        waiting.wait()
        # Let them go once both wait on a lock (the job's row), so they meet there every time.
        deadline = time.monotonic() + 30
        while lock_waiters() < 2:
            assert time.monotonic() < deadline, "the two ranks never both waited for the job"
            time.sleep(0.02)
    for thread in threads:
        thread.join(30)
    assert sorted(results.values()) == [False, True]
    # Requeued once (this test commits: the session's devices may have taken it up again since).
    assert Job.objects.get(pk=model.pk).interruptions == 1
    interrupted = JobEvent.objects.filter(job_id=model.pk, message__startswith="Interrupted: ")
    assert [e.status for e in interrupted] == ["queued"]
    assert not Allocation.objects.filter(job_id=model.pk, attempt=1, released_at__isnull=True).exists()
    job = Job.objects.get(pk=model.pk)
    if job.is_active:  # not left to the devices of the tests that follow
        job_abort(job)


@pytest.mark.parametrize("finished", [True, False])
def test_a_rank_that_crashes_after_finishing_does_not_fail_its_job(owner, finished) -> None:
    """A non-reporting rank whose process aborts in teardown (gloo's threads at exit) after
    saying it had finished its work: its worker counts it as done, and the job stays with
    rank 0, which completes it. The same crash before finishing fails the job."""
    from tests.factories import make_model
    from workers.models import Allocation, Device
    from workers.ranks import _finish_rank
    from workers.runner import ChildResult

    model = make_model(owner, make_dataset(owner), name=f"teardown-{finished}", status="running")
    Job.objects.filter(pk=model.pk).update(attempt=1, started_at=timezone.now())
    device = Device.objects.create(
        uuid=f"cpu-teardown-{finished}", host=settings.HOST_NAME, address="127.0.0.1", kind="cpu", index=0, name="cpu"
    )
    allocation = Allocation.objects.create(
        job_id=model.pk, job_name=model.job.name, owner=owner, device=device, attempt=1, rank=1, world_size=2,
        started_at=timezone.now(), pid=dead_pid(),
    )
    result = ChildResult(returncode=-6, stopped=False, finished=finished)  # SIGABRT: "terminate called ..."
    outcome = _finish_rank(allocation, Job.objects.get(pk=model.pk), result)
    job = Job.objects.get(pk=model.pk)
    if finished:
        assert (outcome, job.status) == ("done", "running")
    else:
        assert (outcome, job.status) == ("error", "error")
        assert job.error.startswith("Rank 1 on ")
