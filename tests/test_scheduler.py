"""The scheduler's rules on real Postgres and Redis, with device rows that no worker
serves (the real device workers are paused meanwhile, so only these devices exist):
priority and FIFO, hold, per-user limits, gang allocation without deadlock, backfill and
its limit, specific and drained devices, placement validation, the reaper, the database's
one-job-per-device rule, and the wait reasons the job page shows."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from models_app.models import Metric, Snapshot
from models_app.services import model_create
from tests.factories import make_dataset
from workers.devices import reap
from workers.models import Allocation, AllocationOutcome, Device, DeviceLimit, Job, JobStatus, Priority
from workers.scheduler import pick_devices, schedule_pass, wait_reason
from workers.errors import JobError
from workers.services import Placement, job_abort, placement_check

pytestmark = pytest.mark.django_db(transaction=True)


def device(host: str, index: int, **extra) -> Device:
    fields = {"last_seen": timezone.now(), **extra}
    return Device.objects.create(
        uuid=f"fake-{host}-{index}", host=host, address="127.0.0.1", kind="cpu", index=index, name="fake", **fields
    )


def queue(owner, dataset, name: str, devices: int = 1, **placement) -> Job:
    model = model_create(owner=owner, name=name, dataset=dataset, batch_size=12, placement=Placement(devices=devices, **placement))
    return model.job


def running(job: Job) -> list[str]:
    return [a.device.label for a in Allocation.objects.filter(job=job, released_at__isnull=True).order_by("rank")]


def finish(job: Job) -> None:
    Allocation.objects.filter(job=job, released_at__isnull=True).update(released_at=timezone.now(), outcome="done")
    Job.objects.filter(pk=job.pk).update(status=JobStatus.DONE)


def test_pick_devices_best_fit_and_spanning() -> None:
    free = [Device(host="a", index=i, pk=i) for i in range(3)] + [Device(host="b", index=i, pk=10 + i) for i in range(2)]
    # Two on one host: the host with fewer free devices, leaving host a's three for a bigger job.
    assert [(d.host, d.index) for d in pick_devices(free, 2, False)] == [("b", 0), ("b", 1)]
    assert [(d.host, d.index) for d in pick_devices(free, 3, False)] == [("a", 0), ("a", 1), ("a", 2)]
    assert pick_devices(free, 4, False) is None
    assert [(d.host, d.index) for d in pick_devices(free, 4, True)] == [("a", 0), ("a", 1), ("a", 2), ("b", 0)]
    assert pick_devices(free, 6, True) is None


def test_priority_then_fifo_and_hold(fake_devices, owner, admin_user) -> None:
    dataset = make_dataset(owner)
    low = queue(owner, dataset, "low", priority=Priority.LOW)
    first = queue(owner, dataset, "first")
    second = queue(owner, dataset, "second")
    urgent = queue(admin_user, dataset, "urgent", priority=Priority.URGENT)
    Job.objects.filter(pk=urgent.pk).update(held=True)
    assert wait_reason(Job.objects.get(pk=second.pk))["ahead"] == 1  # low is behind; held urgent is not counted
    device("h", 0)
    assert schedule_pass() == 1
    assert running(first) == ["h/cpu0"] and not running(second) and not running(low) and not running(urgent)
    assert "Held by an admin" in wait_reason(Job.objects.get(pk=urgent.pk))["reason"]
    finish(first)
    Job.objects.filter(pk=urgent.pk).update(held=False)
    schedule_pass()
    assert running(urgent) == ["h/cpu0"]
    finish(urgent)
    schedule_pass()
    assert running(second) and not running(low)
    finish(second)
    schedule_pass()
    assert running(low)


def test_per_user_limit(fake_devices, owner, teammate, settings) -> None:
    settings.USER_DEVICE_LIMIT = 1
    dataset = make_dataset(owner)
    for i in range(3):
        device("h", i)
    a = queue(owner, dataset, "a")
    b = queue(owner, dataset, "b")
    c = queue(teammate, dataset, "c")
    schedule_pass()
    assert running(a) and not running(b) and running(c)
    reason = wait_reason(Job.objects.get(pk=b.pk))["reason"]
    assert "you may hold 1 device at once and hold 1" in reason
    # An admin raises the owner's limit: the third device goes to b.
    DeviceLimit.objects.create(user=owner, max_devices=2)
    schedule_pass()
    assert running(b)
    with pytest.raises(JobError, match="at most 1 device"):
        placement_check(teammate, devices=2)


def test_gang_allocation_never_deadlocks_and_backfills(fake_devices, owner, settings) -> None:
    dataset = make_dataset(owner)
    for i in range(3):
        device("h", i)
    big1 = queue(owner, dataset, "big1", devices=2)
    big2 = queue(owner, dataset, "big2", devices=2)
    small = queue(owner, dataset, "small")
    schedule_pass()
    # big2 holds nothing while it waits; the free device goes to the small job behind it.
    assert len(running(big1)) == 2 and running(big2) == [] and len(running(small)) == 1
    assert wait_reason(Job.objects.get(pk=big2.pk))["reason"] == "Waiting for 2 devices; 0 free; 0 jobs ahead."
    finish(small)
    schedule_pass()
    assert running(big2) == []  # one free device is not enough: all or nothing
    assert "Waiting for 2 devices; 1 free" in wait_reason(Job.objects.get(pk=big2.pk))["reason"]
    finish(big1)
    schedule_pass()
    assert len(running(big2)) == 2
    # Once a blocked job has waited past the backfill limit, nothing behind it starts.
    finish(big2)
    settings.SCHEDULER_BACKFILL_SECONDS = 0
    hog = queue(owner, dataset, "hog", devices=2)
    big3 = queue(owner, dataset, "big3", devices=3)
    late = queue(owner, dataset, "late")
    schedule_pass()
    assert len(running(hog)) == 2 and running(big3) == [] and running(late) == []


def test_specific_drained_and_offline_devices(fake_devices, owner) -> None:
    dataset = make_dataset(owner)
    d0, d1 = device("h", 0), device("h", 1)
    device("h", 2, enabled=False)  # drained
    device("h", 3, last_seen=timezone.now() - timedelta(minutes=5))  # offline
    other = queue(owner, dataset, "other")
    wants_d1 = queue(owner, dataset, "wants d1", device_ids=(d1.pk,))
    schedule_pass()
    assert running(other) == ["h/cpu0"] and running(wants_d1) == ["h/cpu1"]
    after = queue(owner, dataset, "after", device_ids=(d0.pk,))
    schedule_pass()
    assert running(after) == []  # h/cpu0 is busy; the drained and the offline ones are never used
    assert "h/cpu0 busy" in wait_reason(Job.objects.get(pk=after.pk))["reason"]
    finish(other)
    schedule_pass()
    assert running(after) == ["h/cpu0"]


def test_placement_validation(fake_devices, owner, admin_user) -> None:
    device("a", 0), device("a", 1), device("b", 0)
    with pytest.raises(JobError, match="Only admins") as exc:
        placement_check(owner, priority=Priority.HIGH)
    assert exc.value.field == "priority"
    assert placement_check(admin_user, priority=Priority.URGENT).priority == Priority.URGENT
    with pytest.raises(JobError, match="Only 2 devices are available on one host: ask for fewer, or allow several hosts"):
        placement_check(owner, devices=3)
    assert placement_check(owner, devices=3, multi_host=True).devices == 3
    with pytest.raises(JobError, match="not a multiple of 2") as exc:
        model_create(owner=owner, name="odd", dataset=make_dataset(owner), batch_size=9, placement=Placement(devices=2))
    assert exc.value.field == "batch_size"
    ids = list(Device.objects.filter(host__in=["a", "b"], index=0).values_list("pk", flat=True))
    with pytest.raises(JobError, match="several hosts"):
        placement_check(owner, device_ids=ids)
    with pytest.raises(JobError, match="No such device: 999999"):
        placement_check(owner, device_ids=[999999])


def test_a_device_never_holds_two_allocations(fake_devices, owner) -> None:
    dataset = make_dataset(owner)
    d = device("h", 0)
    job = queue(owner, dataset, "one")
    schedule_pass()
    assert running(job) == ["h/cpu0"]
    other = queue(owner, dataset, "two")
    with pytest.raises(IntegrityError), transaction.atomic():
        Allocation.objects.create(job=other, job_name="two", owner=owner, device=d, attempt=1, rank=0, world_size=1)


def test_reaper_requeues_a_lost_job_to_resume_without_duplicate_points(fake_devices, owner) -> None:
    dataset = make_dataset(owner)
    d = device("h", 0)
    job = queue(owner, dataset, "lost")
    schedule_pass()
    allocation = Allocation.objects.get(job=job)
    Allocation.objects.filter(pk=allocation.pk).update(started_at=timezone.now())
    Job.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, started_at=timezone.now())
    model = job.model
    Snapshot.objects.create(model=model, epoch=1, iteration=10, filename="snapshot_iter_10.pt")
    Metric.objects.bulk_create(Metric(model=model, name="train_loss", iteration=i, epoch=i / 10, value=1.0) for i in range(1, 16))
    assert reap() == 0  # still heartbeating
    Device.objects.filter(pk=d.pk).update(last_seen=timezone.now() - timedelta(minutes=1))
    assert reap() == 1
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and job.interruptions == 1 and job.dispatched_at is None
    assert sorted(model.metrics.values_list("iteration", flat=True)) == list(range(1, 11))
    last = job.events.order_by("-at", "-id").first()
    assert last.status == "queued" and "stopped responding" in last.message and "resume from the snapshot at epoch 1" in last.message
    assert Allocation.objects.get(pk=allocation.pk).outcome == AllocationOutcome.LOST
    assert reap() == 0  # idempotent
    # It keeps its place and starts on the next live device; an abort of a queued job is final.
    device("h", 1)
    schedule_pass()
    assert running(job) == ["h/cpu1"]
    job_abort(Job.objects.get(pk=job.pk))
    assert Job.objects.get(pk=job.pk).status == JobStatus.ABORTED


def test_cluster_console_steers_the_queue_and_devices(fake_devices, owner, teammate, admin_user) -> None:
    from django.test import Client

    from tests.conftest import token_client

    dataset = make_dataset(owner)
    d0 = device("h", 0)
    device("h", 1)
    busy = queue(owner, dataset, "busy")
    other = queue(teammate, dataset, "other")  # both devices taken
    a = queue(owner, dataset, "a")
    b = queue(owner, dataset, "b")
    assert running(busy) and running(other)
    # Not staff: refused everywhere, but anyone may read the devices and the queue.
    user = Client()
    user.force_login(owner)
    assert user.get("/cluster/").status_code == 403
    assert user.post(f"/cluster/devices/{d0.pk}/", {"action": "drain"}).status_code == 403
    assert user.post(f"/cluster/jobs/{a.pk}/", {"action": "top"}).status_code == 403
    owner_api = token_client(owner)
    assert owner_api.patch(f"/api/devices/{d0.pk}/", {"enabled": False}, format="json").status_code == 403
    assert owner_api.post(f"/api/queue/{a.pk}/", {"action": "hold"}, format="json").status_code == 403
    assert owner_api.get("/api/usage/").status_code == 403
    devices = {d["label"]: d for d in owner_api.get("/api/devices/").json()["results"]}
    assert devices["h/cpu0"]["state"] == "busy" and devices["h/cpu0"]["job"]["name"] == "busy"
    assert [q["name"] for q in owner_api.get("/api/queue/").json()["results"]] == ["a", "b"]

    admin = Client()
    admin.force_login(admin_user)
    page = admin.get("/cluster/").content.decode()
    assert "h/cpu0" in page and "h/cpu1" in page and f'data-job="{a.pk}"' in page and "Limits and fair share" in page
    # Reorder: b to the top, then hold it; a goes first when a device frees.
    admin.post(f"/cluster/jobs/{b.pk}/", {"action": "top"})
    assert [q["name"] for q in owner_api.get("/api/queue/").json()["results"]] == ["b", "a"]
    admin.post(f"/cluster/jobs/{b.pk}/", {"action": "hold"})
    assert Job.objects.get(pk=b.pk).held
    # Drain the device of "busy": when it finishes, the device takes nothing new.
    admin.post(f"/cluster/devices/{Allocation.objects.get(job=busy).device_id}/", {"action": "drain"})
    finish(busy)
    schedule_pass()
    assert not running(a)
    assert owner_api.get("/api/devices/").json()["results"][0]["state"] in ("drained", "busy")
    admin_api = token_client(admin_user)
    assert admin_api.patch(f"/api/devices/{d0.pk}/", {"enabled": True}, format="json").status_code == 200
    Device.objects.update(enabled=True)
    schedule_pass()
    assert running(a) and not running(b)  # b is held
    admin.post(f"/cluster/jobs/{b.pk}/", {"action": "release"})
    admin.post(f"/cluster/jobs/{b.pk}/", {"action": "priority", "priority": Priority.URGENT})
    assert Job.objects.get(pk=b.pk).priority == Priority.URGENT and not Job.objects.get(pk=b.pk).held
    assert admin_api.post(f"/api/queue/{b.pk}/", {"action": "cancel"}, format="json").status_code == 204
    assert Job.objects.get(pk=b.pk).status == JobStatus.ABORTED
    # Per-user limits: set, shown, and back to the default.
    admin.post(f"/cluster/limits/{teammate.pk}/", {"max_devices": "3"})
    assert DeviceLimit.objects.get(user=teammate).max_devices == 3
    assert admin_api.put(f"/api/users/{teammate.pk}/device-limit/", {"max_devices": None}, format="json").status_code == 204
    assert not DeviceLimit.objects.filter(user=teammate).exists()
    # Usage: who ran what on which device for how long.
    # "busy" ran for exactly 2 hours: its start is set from its (already written) release.
    Allocation.objects.filter(job=busy).update(started_at=F("released_at") - timedelta(hours=2))
    usage = {u["user"]: u for u in admin_api.get("/api/usage/").json()["usage"]}
    assert usage["owner"]["device_hours"] >= 2.0 and usage["owner"]["jobs"] >= 1
    page = admin.get("/cluster/").content.decode()
    assert "busy" in page and "2h 00m" in page


def test_a_gang_that_did_not_start_backs_off_before_it_is_placed_again(fake_devices, owner, settings) -> None:
    """Its devices were allocated but no worker started them within the rendezvous time:
    the reaper requeues it, and it waits (30 s, doubled per interruption) before the
    scheduler places it again, saying so, instead of retrying in a tight loop."""
    dataset = make_dataset(owner)
    device("gang", 0)
    device("gang", 1)
    job = queue(owner, dataset, "stuck", devices=2)
    assert len(running(job)) == 2  # allocated; no worker serves these rows
    Allocation.objects.filter(job=job).update(allocated_at=timezone.now() - timedelta(seconds=settings.RENDEZVOUS_SECONDS + 5))
    assert reap() == 2
    requeued = Job.objects.get(pk=job.pk)
    assert requeued.status == JobStatus.QUEUED and requeued.interruptions == 1
    wait = (requeued.not_before - timezone.now()).total_seconds()
    assert settings.GANG_RETRY_SECONDS - 5 < wait <= settings.GANG_RETRY_SECONDS
    assert "It is placed again in 30 s at the earliest." in requeued.events.order_by("-id").first().message
    assert schedule_pass() == 0 and not running(job)
    assert wait_reason(requeued)["reason"].startswith("Retrying at ")
    Job.objects.filter(pk=job.pk).update(not_before=timezone.now() - timedelta(seconds=1))
    assert schedule_pass() == 1 and len(running(job)) == 2
