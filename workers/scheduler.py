"""The GPU queue: a fair, all-or-nothing (gang) scheduler.

`schedule()` is called whenever something may let a job start: a job is queued, a rank
releases its device, a device registers or is enabled, an admin changes the queue, and on
every worker heartbeat as a safety net. One pass at a time runs (a Redis lock); a call
that finds the lock taken leaves a flag so the holder runs another pass.

A pass walks the queued jobs in order (priority, then queue position: FIFO unless an admin
reordered) and starts each one whose devices are all free *now*:
  - all-or-nothing: a job needing N devices gets N at once or nothing, so no job ever
    holds some devices while waiting for more (no deadlock between two large jobs);
  - on one host first (the host with the fewest free devices that fits, leaving large
    blocks for large jobs), across hosts only when the job allows it;
  - specific devices: exactly those, when all are free;
  - a user's jobs never hold more than their device limit;
  - disabled (drained) and silent devices get nothing new.
A job that does not fit is passed over and smaller jobs behind it may start (backfill),
until it has waited SCHEDULER_BACKFILL_SECONDS: then nothing behind it starts before it.

Starting a job means one Allocation row per rank (the database refuses a second active
allocation of a device, so a device never runs two jobs even if two passes raced) and one
Celery message per rank on its device's own queue; see workers/ranks.py. Which jobs are
placed, and what they wait for besides devices, is their kind's business (workers/kinds.py).
"""
from __future__ import annotations

from datetime import timedelta

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import redis
from celery import current_app
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from . import kinds
from .live import redis_client
from .models import Allocation, Device, DeviceLimit, Job, JobStatus
from .transitions import job_fail

log = logging.getLogger(__name__)

LOCK_KEY = "digits:scheduler:lock"
AGAIN_KEY = "digits:scheduler:again"
QUEUE_ORDER = ["-priority", "queue_position", "id"]
# workers/tasks.py, sent by name: the scheduler sits below the code that runs a rank.
RANK_TASK = "workers.tasks.job_rank_task"


def schedule() -> int:
    """Run scheduling passes until nothing new was asked for; returns the jobs started.
    Never raises for a Redis outage: running jobs go on, and the next heartbeat retries."""
    started = 0
    try:
        client = redis_client()
        client.set(AGAIN_KEY, 1)
        while True:
            lock = client.lock(LOCK_KEY, timeout=60)
            if not lock.acquire(blocking=False):
                return started  # the holder sees AGAIN_KEY after its pass and runs again
            try:
                while client.getdel(AGAIN_KEY):
                    started += schedule_pass()
            finally:
                lock.release()
            if not client.exists(AGAIN_KEY):
                return started
    except redis.RedisError:
        log.warning("scheduler: Redis is unreachable; will retry on the next heartbeat", exc_info=True)
        return started


def schedule_on_commit() -> None:
    transaction.on_commit(schedule)


def queued_jobs() -> QuerySet[Job]:
    """Jobs waiting for devices, in queue order (held ones included)."""
    return Job.objects.filter(
        kind__in=kinds.device_kinds(), status=JobStatus.QUEUED, dispatched_at__isnull=True
    ).order_by(*QUEUE_ORDER)


def blocked_jobs(jobs: list[tuple[int, str]]) -> dict[int, kinds.Blocked]:
    """Of these queued (job id, kind) pairs, those their kind says must not start yet."""
    by_kind: dict[str, list[int]] = defaultdict(list)
    for pk, kind in jobs:
        by_kind[kind].append(pk)
    blocked: dict[int, kinds.Blocked] = {}
    for kind, ids in by_kind.items():
        blocked.update(kinds.get(kind).blocked(ids))
    return blocked


def live_devices() -> QuerySet[Device]:
    cutoff = timezone.now() - timedelta(seconds=settings.DEVICE_DEAD_SECONDS)
    return Device.objects.filter(last_seen__gte=cutoff)


def busy_device_ids() -> set[int]:
    return set(Allocation.objects.filter(released_at__isnull=True).values_list("device_id", flat=True))


def user_limit(user_id: int, overrides: dict[int, int] | None = None) -> int:
    """Devices the user's jobs may hold at once; 0 means no limit."""
    if overrides is None:
        overrides = dict(DeviceLimit.objects.filter(user_id=user_id).values_list("user_id", "max_devices"))
    return overrides.get(user_id, settings.USER_DEVICE_LIMIT)


def devices_in_use_by_user() -> Counter[int]:
    return Counter(Allocation.objects.filter(released_at__isnull=True).values_list("owner_id", flat=True))


def pick_devices(free: list[Device], need: int, multi_host: bool) -> list[Device] | None:
    """Gang placement: `need` free devices on one host (best fit), else across hosts
    when allowed (largest hosts first, so the job spans as few as possible), else None."""
    by_host: dict[str, list[Device]] = defaultdict(list)
    for device in free:
        by_host[device.host].append(device)
    fitting = [host for host, devices in by_host.items() if len(devices) >= need]
    if fitting:
        host = min(fitting, key=lambda h: (len(by_host[h]), h))
        return sorted(by_host[host], key=lambda d: d.index)[:need]
    if not multi_host or len(free) < need:
        return None
    chosen: list[Device] = []
    for host in sorted(by_host, key=lambda h: (-len(by_host[h]), h)):
        chosen.extend(sorted(by_host[host], key=lambda d: d.index)[: need - len(chosen)])
        if len(chosen) == need:
            return chosen
    return None


@dataclass
class _State:
    free: list[Device]
    in_use: Counter[int]
    limits: dict[int, int]
    started: list[int] = field(default_factory=list)


def schedule_pass() -> int:
    """One pass over the queue (see the module docstring). Returns the jobs started."""
    blocked = blocked_jobs(list(queued_jobs().values_list("pk", "kind")))
    for pk, why in list(blocked.items()):
        if why.fail:  # it can never start (its dataset failed): say why, now
            job_fail(pk, why.reason)
    free_devices = list(live_devices().filter(enabled=True).exclude(pk__in=busy_device_ids()))
    if not free_devices:
        return 0
    state = _State(
        free=free_devices,
        in_use=devices_in_use_by_user(),
        limits=dict(DeviceLimit.objects.values_list("user_id", "max_devices")),
    )
    now = timezone.now()
    queue = queued_jobs().filter(held=False).exclude(pk__in=list(blocked)).prefetch_related("requested_devices")
    # Small chunks: most passes place one job on the one device just freed, and stop there.
    # Blocked jobs (waiting for their dataset) take nothing meanwhile.
    for job in queue.iterator(chunk_size=20):
        if not state.free:
            break
        need = job.devices_requested
        limit = user_limit(job.owner_id, state.limits)
        if limit and state.in_use[job.owner_id] + need > limit:
            continue
        wanted = list(job.requested_devices.all())
        if wanted:
            free_ids = {d.pk for d in state.free}
            chosen = wanted if all(d.pk in free_ids for d in wanted) else None
        else:
            chosen = pick_devices(state.free, need, job.multi_host)
        if chosen is None:
            waited = (now - (job.queued_at or job.created_at)).total_seconds()
            if waited > settings.SCHEDULER_BACKFILL_SECONDS:
                break  # it has waited long enough: nothing behind it may take its devices
            continue
        if _dispatch(job, chosen):
            chosen_ids = {d.pk for d in chosen}
            state.free = [d for d in state.free if d.pk not in chosen_ids]
            state.in_use[job.owner_id] += len(chosen)
            state.started.append(job.pk)
    return len(state.started)


def _dispatch(job: Job, devices: list[Device]) -> bool:
    """Allocate `devices` to a new attempt of `job` and send each rank to its device."""
    try:
        with transaction.atomic():
            updated = Job.objects.filter(
                pk=job.pk, status=JobStatus.QUEUED, dispatched_at__isnull=True, held=False
            ).update(dispatched_at=timezone.now(), attempt=F("attempt") + 1, rendezvous="")
            if not updated:
                return False  # aborted, held or dispatched meanwhile
            attempt = Job.objects.values_list("attempt", flat=True).get(pk=job.pk)
            allocations = Allocation.objects.bulk_create(
                Allocation(
                    job=job, job_name=job.name, owner_id=job.owner_id, device=device,
                    attempt=attempt, rank=rank, world_size=len(devices),
                )
                for rank, device in enumerate(devices)
            )
            if any(a.pk is None for a in allocations):  # backends without RETURNING
                allocations = list(Allocation.objects.filter(job=job, attempt=attempt).order_by("rank"))
            messages = [(a.pk, d.queue) for a, d in zip(allocations, devices)]
            transaction.on_commit(lambda: [current_app.send_task(RANK_TASK, args=[pk], queue=q) for pk, q in messages])
    except IntegrityError:
        log.warning("scheduler: a device of job %s was taken meanwhile; it waits for the next pass", job.pk)
        return False
    log.info("scheduler: job %s attempt %s on %s", job.pk, attempt, ", ".join(d.label for d in devices))
    return True


# -- what the pages show -----------------------------------------------------------------


@dataclass
class QueueView:
    """What every wait reason needs, read once: the queue order, the live devices, which
    are busy, and each user's devices in use and limit."""

    order: list[tuple[int, bool]]  # (job id, held) in queue order
    devices: list[Device]
    busy: set[int]
    in_use: Counter[int]
    limits: dict[int, int]
    blocked: dict[int, kinds.Blocked]

    @classmethod
    def now(cls) -> QueueView:
        queue = list(queued_jobs().values_list("pk", "held", "kind"))
        return cls(
            order=[(pk, held) for pk, held, _ in queue],
            blocked=blocked_jobs([(pk, kind) for pk, _, kind in queue]),
            devices=list(live_devices()),
            busy=busy_device_ids(),
            in_use=devices_in_use_by_user(),
            limits=dict(DeviceLimit.objects.values_list("user_id", "max_devices")),
        )


def wait_reason(job: Job, view: QueueView | None = None) -> dict[str, object]:
    """Why a queued job is not running yet, and its place in the queue. Pass one `view`
    when explaining many jobs (the console), so the queue and devices are read once."""
    if job.status != JobStatus.QUEUED:
        return {}
    if job.dispatched_at:
        return {"position": 0, "ahead": 0, "reason": "Starting: its devices have been allocated."}
    view = view or QueueView.now()
    ahead = 0
    for pk, held in view.order:
        if pk == job.pk:
            break
        if not held:
            ahead += 1
    position = ahead + 1
    need = job.devices_requested
    devices, busy = view.devices, view.busy
    usable = [d for d in devices if d.enabled]
    free = [d for d in usable if d.pk not in busy]
    noun = "device" if need == 1 else "devices"
    kind = _kind_word(devices)
    jobs_ahead = f"{ahead} job{'s' if ahead != 1 else ''} ahead"
    blocked = view.blocked.get(job.pk)
    wanted = list(job.requested_devices.all())
    if job.held:
        reason = "Held by an admin: it keeps its place but does not start until released."
    elif blocked is not None:
        reason = blocked.reason
    elif len(usable) < need and not wanted:
        reason = (
            f"Waiting for {need} {kind}{'s' if need != 1 else ''}: only {len(usable)} enabled "
            f"device{'s are' if len(usable) != 1 else ' is'} online."
        )
    elif wanted:
        taken = [d.label for d in wanted if d.pk in busy or not d.enabled or not d.online]
        reason = f"Waiting for the devices it asked for: {', '.join(taken) or 'none'} busy, drained or offline; {jobs_ahead}."
    else:
        limit = user_limit(job.owner_id, view.limits)
        in_use = view.in_use[job.owner_id]
        if limit and in_use + need > limit:
            reason = (
                f"Waiting for your other jobs: you may hold {limit} device{'s' if limit != 1 else ''} at once "
                f"and hold {in_use}; {jobs_ahead}."
            )
        elif len(free) >= need and not job.multi_host and pick_devices(free, need, False) is None:
            reason = f"Waiting for {need} {noun} on one host: {len(free)} free, but spread over hosts; {jobs_ahead}."
        else:
            reason = f"Waiting for {need} {kind}{'s' if need != 1 else ''}; {len(free)} free; {jobs_ahead}."
    return {"position": position, "ahead": ahead, "reason": reason}


def _kind_word(devices: list[Device]) -> str:
    return "GPU" if any(d.kind == "gpu" for d in devices) else "device"
