"""The GPU queue: a fair, all-or-nothing (gang) scheduler.

`schedule()` is called whenever something may let a job start: a job is queued, a rank
releases its device, a device registers or is enabled, an admin changes the queue, and on
every worker heartbeat as a safety net. One pass at a time runs (a Redis lock); a call
that finds the lock taken leaves a flag so the holder runs another pass.

A pass walks the queued jobs in order (priority; then fair share: the team, then the user,
with the fewest decayed device-hours first, see workers/fairshare.py; then each user's own
queue order, FIFO unless an admin reordered) and starts each one whose devices are all
free *now*:
  - all-or-nothing: a job needing N devices gets N at once or nothing, so no job ever
    holds some devices while waiting for more (no deadlock between two large jobs);
  - on one host first (the host with the fewest free devices that fits, leaving large
    blocks for large jobs), across hosts only when the job allows it;
  - specific devices: exactly those, when all are free;
  - a user's (and a team's) jobs never hold more than their device limit, nor start past
    their device-hours quota for the last 7 days;
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
from dataclasses import dataclass
from functools import cached_property

import redis
from celery import current_app
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, QuerySet, Window
from django.db.models.functions import Coalesce, RowNumber
from django.utils import timezone

from . import fairshare, kinds
from .fairshare import FairQueue, Waiting
from .live import redis_client
from .models import Allocation, Device, DeviceLimit, Job, JobStatus, TeamLimit
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


def blocked_jobs(queue: QuerySet[Job] | None = None) -> dict[int, kinds.Blocked]:
    """Of the queued jobs (or of `queue`), those their kind says must not start yet. Each
    kind gets its jobs as a subquery: the database finds the few blocked ones, however
    long the queue."""
    queue = queued_jobs() if queue is None else queue
    blocked: dict[int, kinds.Blocked] = {}
    for kind in kinds.device_kinds():
        blocked.update(kinds.get(kind).blocked(queue.filter(kind=kind).order_by().values("pk")))
    return blocked


def live_devices() -> QuerySet[Device]:
    cutoff = timezone.now() - timedelta(seconds=settings.DEVICE_DEAD_SECONDS)
    return Device.objects.filter(last_seen__gte=cutoff)


def busy_device_ids() -> set[int]:
    return set(Allocation.objects.filter(released_at__isnull=True).values_list("device_id", flat=True))


def user_limit(user_id: int) -> int:
    """Devices the user's jobs may hold at once; 0 means no limit."""
    override = DeviceLimit.objects.filter(user_id=user_id).values_list("max_devices", flat=True).first()
    return settings.USER_DEVICE_LIMIT if override is None else override


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
class Quotas:
    """Every limit a job must fit in, read once per pass or page: devices held at once
    (per user, per team) and device-hours in the last 7 days (per user, per team)."""

    device_limits: dict[int, int]  # user -> max devices (overrides of USER_DEVICE_LIMIT)
    hour_limits: dict[int, float]  # user -> max device-hours a week (overrides)
    team_limits: dict[int, tuple[int, float, str]]  # team -> (max devices, max hours a week, name)
    team_of: dict[int, int]  # user -> team, for users in one
    in_use: Counter[int]  # user -> devices held now
    weekly: dict[int, float] | None = None  # user -> device-hours in the last 7 days, when any quota needs them

    @classmethod
    def now(cls) -> Quotas:
        overrides = list(DeviceLimit.objects.values_list("user_id", "max_devices", "max_device_hours_per_week"))
        team_limits = {
            t: (devices, hours, name)
            for t, devices, hours, name in TeamLimit.objects.values_list(
                "team_id", "max_devices", "max_device_hours_per_week", "team__name"
            )
        }
        in_use = devices_in_use_by_user()
        quotas = cls(
            device_limits={u: d for u, d, _ in overrides if d is not None},
            hour_limits={u: h for u, _, h in overrides if h is not None},
            team_limits=team_limits,
            team_of=fairshare.teams_of(),
            in_use=in_use,
        )
        if settings.USER_DEVICE_HOURS_PER_WEEK or any(quotas.hour_limits.values()) or any(h for _, h, _ in team_limits.values()):
            quotas.weekly = fairshare.weekly_device_hours()
        return quotas

    def _team_total(self, team: int, per_user: Counter[int] | dict[int, float]) -> float:
        return sum(v for u, v in per_user.items() if self.team_of.get(u) == team)

    def refusal(self, user_id: int, need: int) -> str | None:
        """Why this user's job of `need` devices may not start now; None: it may."""
        limit = self.device_limits.get(user_id, settings.USER_DEVICE_LIMIT)
        held = self.in_use[user_id]
        if limit and held + need > limit:
            return f"Waiting for your other jobs: you may hold {limit} device{'s' if limit != 1 else ''} at once and hold {held}"
        team = self.team_of.get(user_id)
        max_devices, max_hours, name = self.team_limits.get(team, (0, 0.0, "")) if team is not None else (0, 0.0, "")
        if max_devices and team is not None:
            team_held = int(self._team_total(team, self.in_use))
            if team_held + need > max_devices:
                return f"Waiting for team {name}'s other jobs: it may hold {max_devices} devices at once and holds {team_held}"
        if self.weekly is not None:
            hours = self.hour_limits.get(user_id, settings.USER_DEVICE_HOURS_PER_WEEK)
            used = self.weekly.get(user_id, 0.0)
            if hours and used >= hours:
                return (
                    f"Over your weekly quota: {used:.1f} of {hours:g} device-hours used in the last 7 days; "
                    "it starts as that use ages out of the window"
                )
            if max_hours and team is not None:
                team_used = self._team_total(team, self.weekly)
                if team_used >= max_hours:
                    return (
                        f"Over team {name}'s weekly quota: {team_used:.1f} of {max_hours:g} device-hours used in the "
                        "last 7 days; it starts as that use ages out of the window"
                    )
        return None

    def take(self, user_id: int, need: int) -> None:
        self.in_use[user_id] += need


def fair_queue(rows: list[Waiting], team_of: dict[int, int]) -> FairQueue:
    """The queued jobs in fair-share order, by every user's decayed usage now."""
    return FairQueue(rows, fairshare.usage_hours(), team_of)


def requested_devices() -> dict[int, list[int]]:
    """job id -> the device ids it asked for, for every queued job that asked for some."""
    through = Job.requested_devices.through
    wanted: dict[int, list[int]] = defaultdict(list)
    rows = through.objects.filter(job__status=JobStatus.QUEUED, job__dispatched_at__isnull=True)
    for job_id, device_id in rows.values_list("job_id", "device_id"):
        wanted[job_id].append(device_id)
    return wanted


def schedule_pass() -> int:
    """One pass over the queue (see the module docstring). Returns the jobs started."""
    blocked = blocked_jobs()
    for pk, why in list(blocked.items()):
        if why.fail:  # it can never start (its dataset failed): say why, now
            job_fail(pk, why.reason)
    free = list(live_devices().filter(enabled=True).exclude(pk__in=busy_device_ids()))
    if not free:
        return 0
    fairshare.fold_released()
    quotas = Quotas.now()
    wanted = requested_devices()
    # A pass starts at most one job per free device: the first few jobs of each user are
    # enough to choose from, however long the queue. Only when those run out (passed
    # over: no fit, over quota) while devices stay free does it read every job.
    per_user = 4 * len(free) + 16
    rows = waiting_jobs(blocked, per_user)
    started, free, exhausted = _place(rows, free, quotas, wanted)
    if exhausted and free and max(Counter(w.owner_id for w, _ in rows.values()).values(), default=0) >= per_user:
        more, free, _ = _place(waiting_jobs(blocked, None), free, quotas, wanted)
        started += more
    return started


def waiting_jobs(blocked: dict[int, kinds.Blocked], per_user: int | None) -> dict[int, tuple[Waiting, bool]]:
    """The jobs a pass may start (not held, not blocked), each with whether it may span
    hosts; at most the first `per_user` of each user's queue."""
    queue = queued_jobs().filter(held=False).exclude(pk__in=list(blocked))  # blocked: they take nothing meanwhile
    if per_user is not None:
        order = [F("priority").desc(), F("queue_position").asc(), F("id").asc()]
        queue = queue.annotate(n=Window(RowNumber(), partition_by=[F("owner_id")], order_by=order)).filter(n__lte=per_user)
    fields = ("pk", "owner_id", "priority", "queue_position", "devices_requested", "multi_host")
    return {
        pk: (Waiting(pk, owner_id, priority, position, need), multi_host)
        for pk, owner_id, priority, position, need, multi_host in queue.values_list(*fields)
    }


def _place(
    rows: dict[int, tuple[Waiting, bool]], free: list[Device], quotas: Quotas, wanted: dict[int, list[int]]
) -> tuple[int, list[Device], bool]:
    """Start what fits, in fair-share order. Returns the jobs started, the devices still
    free, and whether every row was tried (False: stopped by a job that waited too long)."""
    order = fair_queue([w for w, _ in rows.values()], quotas.team_of)
    now = timezone.now()
    started = 0
    while free:
        waiting = order.pop()
        if waiting is None:
            return started, free, True
        if quotas.refusal(waiting.owner_id, waiting.need) is not None:
            continue
        if waiting.pk in wanted:
            free_by_id = {d.pk: d for d in free}
            chosen = [free_by_id[i] for i in wanted[waiting.pk]] if all(i in free_by_id for i in wanted[waiting.pk]) else None
        else:
            chosen = pick_devices(free, waiting.need, rows[waiting.pk][1])
        if chosen is None:
            since = Job.objects.filter(pk=waiting.pk).values_list(Coalesce("queued_at", "created_at"), flat=True).get()
            if (now - since).total_seconds() > settings.SCHEDULER_BACKFILL_SECONDS:
                return started, free, False  # it has waited long enough: nothing behind it may take its devices
            continue
        if _dispatch(waiting.pk, chosen):
            chosen_ids = {d.pk for d in chosen}
            free = [d for d in free if d.pk not in chosen_ids]
            quotas.take(waiting.owner_id, len(chosen))
            order.charge(waiting, len(chosen) * fairshare.START_CHARGE_HOURS)
            started += 1
    return started, free, False


def _dispatch(job_id: int, devices: list[Device]) -> bool:
    """Allocate `devices` to a new attempt of the job and send each rank to its device."""
    try:
        with transaction.atomic():
            updated = Job.objects.filter(
                pk=job_id, status=JobStatus.QUEUED, dispatched_at__isnull=True, held=False
            ).update(dispatched_at=timezone.now(), attempt=F("attempt") + 1, rendezvous="")
            if not updated:
                return False  # aborted, held or dispatched meanwhile
            job = Job.objects.only("pk", "name", "owner_id", "attempt").get(pk=job_id)
            attempt = job.attempt
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
        log.warning("scheduler: a device of job %s was taken meanwhile; it waits for the next pass", job_id)
        return False
    log.info("scheduler: job %s attempt %s on %s", job_id, attempt, ", ".join(d.label for d in devices))
    return True


# -- what the pages show -----------------------------------------------------------------


@dataclass
class QueueView:
    """What every wait reason needs, read once: the queue in the order jobs would start
    (fair share), the live devices, which are busy, and every quota."""

    order: list[int]  # ids of the jobs not held, in the order they would start
    held: set[int]
    devices: list[Device]
    busy: set[int]
    quotas: Quotas
    blocked: dict[int, kinds.Blocked]

    @classmethod
    def now(cls) -> QueueView:
        queue = list(queued_jobs().values_list("pk", "held", "kind", "owner_id", "priority", "queue_position", "devices_requested"))
        quotas = Quotas.now()
        waiting = [Waiting(pk, owner, priority, position, need) for pk, held, _, owner, priority, position, need in queue if not held]
        return cls(
            order=[w.pk for w in fair_queue(waiting, quotas.team_of)],
            held={pk for pk, held, *_ in queue if held},
            blocked=blocked_jobs(),
            devices=list(live_devices()),
            busy=busy_device_ids(),
            quotas=quotas,
        )

    def ahead_of(self, job_id: int) -> int:
        """Jobs that would start before this one (all of them, for a held job)."""
        return self._positions.get(job_id, len(self.order))

    @cached_property
    def _positions(self) -> dict[int, int]:
        return {pk: n for n, pk in enumerate(self.order)}


def wait_reason(job: Job, view: QueueView | None = None) -> dict[str, object]:
    """Why a queued job is not running yet, and its place in the queue. Pass one `view`
    when explaining many jobs (the console), so the queue and devices are read once."""
    if job.status != JobStatus.QUEUED:
        return {}
    if job.dispatched_at:
        return {"position": 0, "ahead": 0, "reason": "Starting: its devices have been allocated."}
    view = view or QueueView.now()
    ahead = view.ahead_of(job.pk)
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
    refusal = view.quotas.refusal(job.owner_id, need)
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
    elif refusal is not None:
        reason = f"{refusal}; {jobs_ahead}."
    elif len(free) >= need and not job.multi_host and pick_devices(free, need, False) is None:
        reason = f"Waiting for {need} {noun} on one host: {len(free)} free, but spread over hosts; {jobs_ahead}."
    else:
        reason = f"Waiting for {need} {kind}{'s' if need != 1 else ''}; {len(free)} free; {jobs_ahead}."
    return {"position": position, "ahead": ahead, "reason": reason}


def _kind_word(devices: list[Device]) -> str:
    return "GPU" if any(d.kind == "gpu" for d in devices) else "device"
