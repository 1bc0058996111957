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

from datetime import datetime, timedelta

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
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
from .models import Allocation, Device, DeviceLimit, Job, JobStatus, Priority, StopReason, TeamLimit
from .transitions import job_fail, job_request_stop

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
    started = _place_all(blocked, free) if free else 0
    preempt_pass()  # one query when no preemptible job runs
    return started


def _place_all(blocked: dict[int, kinds.Blocked], free: list[Device]) -> int:
    fairshare.fold_released()
    quotas = Quotas.now()
    wanted = requested_devices()
    # A pass starts at most one job per free device: the first few jobs of each user are
    # enough to choose from, however long the queue. Only when those run out (passed
    # over: no fit, over quota) while devices stay free does it read every job.
    per_user = 4 * len(free) + 16
    rows = waiting_jobs(blocked, per_user)
    making_room = preempting_for()
    started, free, exhausted = _place(rows, free, quotas, wanted, making_room)
    if exhausted and free and max(Counter(w.owner_id for w, _, _ in rows.values()).values(), default=0) >= per_user:
        more, free, _ = _place(waiting_jobs(blocked, None), free, quotas, wanted, making_room)
        started += more
    return started


def preempting_for() -> set[int]:
    """Queued jobs whose preemptions are under way (their victims are stopping)."""
    rows = Job.objects.filter(status=JobStatus.RUNNING, preempted_for__isnull=False).values_list("preempted_for", flat=True)
    return {pk for pk in rows if pk is not None}


def preempt_pass() -> int:
    """Make room for waiting jobs by stopping preemptible running jobs of a lower
    priority (see `preempt`). Run by every scheduling pass that found devices busy."""
    victims = Job.objects.filter(
        status=JobStatus.RUNNING, preemptible=True, stop_request="", kind__in=kinds.stoppable_device_kinds()
    )
    lowest = victims.order_by("priority").values_list("priority", flat=True).first()
    if lowest is None:
        return 0
    blocked = blocked_jobs()
    waiting = [
        (w, multi_host) for w, multi_host, _ in waiting_jobs(blocked, 64).values() if w.priority > lowest
    ]
    if not waiting:
        return 0
    return preempt(waiting, Quotas.now())


def preempt(waiting: list[tuple[Waiting, bool]], quotas: Quotas) -> int:
    """For each waiting job (in fair-share order) of a higher priority than some running
    preemptible job, and that the devices free or already being freed cannot hold: ask
    the fewest such jobs (lowest priority first, then the latest started) to stop, so it
    fits. They snapshot at their next step and are requeued to resume by themselves; the
    waiting job starts when their devices free (nothing smaller takes them meanwhile).
    Returns how many jobs were asked to stop."""
    usable = {d.pk: d for d in live_devices().filter(enabled=True)}
    held: dict[int, list[Device]] = defaultdict(list)
    for job_id, device_id in Allocation.objects.filter(released_at__isnull=True).values_list("job_id", "device_id"):
        if job_id is not None and device_id in usable:
            held[job_id].append(usable[device_id])
    busy = {d.pk for devices in held.values() for d in devices}
    running = list(
        Job.objects.filter(status=JobStatus.RUNNING, pk__in=list(held)).values_list(
            "pk", "priority", "started_at", "preemptible", "stop_request", "name", "owner__username"
        )
    )
    # Devices free now or as soon as the runs already asked to stop have stopped.
    pool = [d for pk, d in usable.items() if pk not in busy]
    pool += [d for pk, *_, stop, _, _ in running if stop for d in held[pk]]
    candidates = sorted(
        ((pk, priority, started) for pk, priority, started, preemptible, stop, *_ in running if preemptible and not stop),
        key=lambda row: (row[1], -(row[2].timestamp() if row[2] else 0.0)),
    )
    names = {pk: (name, owner) for pk, *_, name, owner in running}
    wanted = requested_devices()  # jobs that asked for given devices wait for those: no preemption for them
    waiting = [(w, multi_host) for w, multi_host in waiting if w.pk not in wanted]
    jobs = {w.pk: (w, multi_host) for w, multi_host in waiting}
    order = fair_queue([w for w, _ in waiting], quotas.team_of)
    asked = 0
    while (w := order.pop()) is not None:
        if quotas.refusal(w.owner_id, w.need) is not None:
            continue
        multi_host = jobs[w.pk][1]
        chosen = pick_devices(pool, w.need, multi_host)
        victims: list[int] = []
        for pk, priority, _ in candidates:
            if chosen is not None:
                break
            if priority >= w.priority:
                continue
            victims.append(pk)
            chosen = pick_devices(pool + [d for v in victims for d in held[v]], w.need, multi_host)
        if chosen is None:
            continue  # even all the lower-priority preemptible jobs would not make room
        taken = {d.pk for d in chosen}
        victims = [v for v in victims if any(d.pk in taken for d in held[v])]  # only those whose devices it takes
        if victims:
            owner = Job.objects.filter(pk=w.pk).values_list("owner__username", flat=True).first() or "?"
            note = f"by job #{w.pk} ({Priority(w.priority).label.lower()} priority, {owner})"
            for pk in victims:
                job = Job.objects.only("pk", "started_at").get(pk=pk)
                if job_request_stop(job, StopReason.PREEMPT, note, preempted_for=w.pk):
                    asked += 1
                    log.info("scheduler: preempting job %s (%s of %s) %s", pk, *names[pk], note)
            candidates = [c for c in candidates if c[0] not in victims]
            pool += [d for v in victims for d in held[v]]
        pool = [d for d in pool if d.pk not in taken]
        quotas.take(w.owner_id, w.need)
        order.charge(w, w.need * fairshare.START_CHARGE_HOURS)
    return asked


def waiting_jobs(blocked: dict[int, kinds.Blocked], per_user: int | None) -> dict[int, tuple[Waiting, bool, datetime]]:
    """The jobs a pass may start (not held, not blocked), each with whether it may span
    hosts and since when it waits; at most the first `per_user` of each user's queue."""
    queue = queued_jobs().filter(held=False).exclude(pk__in=list(blocked))  # blocked: they take nothing meanwhile
    queue = queue.exclude(not_before__gt=timezone.now())  # backing off after a failed gang start
    if per_user is not None:
        order = [F("priority").desc(), F("queue_position").asc(), F("id").asc()]
        queue = queue.annotate(n=Window(RowNumber(), partition_by=[F("owner_id")], order_by=order)).filter(n__lte=per_user)
    fields = ("pk", "owner_id", "priority", "queue_position", "devices_requested", "multi_host", "since")
    return {
        pk: (Waiting(pk, owner_id, priority, position, need), multi_host, since)
        for pk, owner_id, priority, position, need, multi_host, since in queue.annotate(
            since=Coalesce("queued_at", "created_at")
        ).values_list(*fields)
    }


def _place(
    rows: dict[int, tuple[Waiting, bool, datetime]], free: list[Device], quotas: Quotas, wanted: dict[int, list[int]],
    making_room: set[int],
) -> tuple[int, list[Device], bool]:
    """Start what fits, in fair-share order. Returns the jobs started, the devices still
    free, and whether every row was tried (False: stopped by a job that waited too long)."""
    order = fair_queue([w for w, _, _ in rows.values()], quotas.team_of)
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
            if waiting.pk in making_room:
                return started, free, False  # jobs are stopping to make room for it: keep what they free for it
            if (now - rows[waiting.pk][2]).total_seconds() > settings.SCHEDULER_BACKFILL_SECONDS:
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
    jobs: dict[int, tuple[str, Waiting, float]]  # id -> (kind, what the order needs, progress)

    @classmethod
    def now(cls) -> QueueView:
        fields = ("pk", "held", "kind", "owner_id", "priority", "queue_position", "devices_requested", "progress")
        queue = list(queued_jobs().values_list(*fields))
        quotas = Quotas.now()
        jobs = {pk: (kind, Waiting(pk, owner, priority, position, need), progress)
                for pk, _, kind, owner, priority, position, need, progress in queue}
        return cls(
            order=[w.pk for w in fair_queue([jobs[pk][1] for pk, held, *_ in queue if not held], quotas.team_of)],
            held={pk for pk, held, *_ in queue if held},
            blocked=blocked_jobs(),
            devices=list(live_devices()),
            busy=busy_device_ids(),
            quotas=quotas,
            jobs=jobs,
        )

    def ahead_of(self, job_id: int) -> int:
        """Jobs that would start before this one (all of them, for a held job)."""
        return self._positions.get(job_id, len(self.order))

    @cached_property
    def _positions(self) -> dict[int, int]:
        return {pk: n for n, pk in enumerate(self.order)}

    def estimated_start(self, job_id: int) -> datetime | None:
        """When this job should start, or None when that cannot be told (see `_starts`)."""
        return self._starts.get(job_id)

    @cached_property
    def _starts(self) -> dict[int, datetime]:
        """Replay the queue on a clock: each usable device frees when its running job's
        ETA says (now if free); each job, in the order they would start, takes the devices
        that free first and holds them for its kind's estimate of its run. A job whose
        start cannot be told (held, blocked, over quota, waiting for devices whose
        running or queued job has no estimate) gets none, and holds nothing in the replay."""
        now = timezone.now()
        usable = {d.pk: d for d in self.devices if d.enabled}
        etas = dict(
            Allocation.objects.filter(released_at__isnull=True, device_id__in=list(usable)).values_list(
                "device_id", "job__eta_seconds"
            )
        )
        free_at: dict[int, datetime] = {}
        for pk in usable:
            if pk not in self.busy:
                free_at[pk] = now
            elif etas.get(pk) is not None:
                free_at[pk] = now + timedelta(seconds=float(etas[pk] or 0.0))
        durations = self._durations()
        wanted = requested_devices()
        quotas = replace(self.quotas, in_use=Counter(self.quotas.in_use))  # the replay takes devices on a copy
        starts: dict[int, datetime] = {}
        for pk in self.order:
            waiting = self.jobs[pk][1]
            if pk in self.blocked or quotas.refusal(waiting.owner_id, waiting.need) is not None:
                continue
            candidates = [d for d in wanted.get(pk, usable) if d in free_at]
            if len(candidates) < waiting.need or (pk in wanted and len(candidates) < len(wanted[pk])):
                continue
            chosen = sorted(candidates, key=lambda d: free_at[d])[: waiting.need]
            start = max(free_at[d] for d in chosen)
            starts[pk] = start
            for d in chosen:
                if pk in durations:
                    free_at[d] = start + timedelta(seconds=durations[pk])
                else:  # how long it holds them is not known: nothing after it can be told there
                    del free_at[d]
        return starts

    def _durations(self) -> dict[int, float]:
        """Seconds each queued job should run, from its kind (what is left of it, for a
        job that is resumed)."""
        by_kind: dict[str, list[int]] = defaultdict(list)
        for pk, (kind, _, _) in self.jobs.items():
            by_kind[kind].append(pk)
        durations: dict[int, float] = {}
        for kind, ids in by_kind.items():
            for pk, seconds in kinds.get(kind).estimate_seconds(ids).items():
                durations[pk] = seconds * (1.0 - min(max(self.jobs[pk][2], 0.0), 1.0))
        return durations


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
    elif job.not_before and job.not_before > timezone.now():
        reason = (
            f"Retrying at {timezone.localtime(job.not_before):%H:%M:%S}: its ranks did not all start last time "
            f"(interrupted {job.interruptions} time{'s' if job.interruptions != 1 else ''}); {jobs_ahead}."
        )
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
    start = view.estimated_start(job.pk)
    return {"position": position, "ahead": ahead, "reason": reason, "estimated_start": start}


def _kind_word(devices: list[Device]) -> str:
    return "GPU" if any(d.kind == "gpu" for d in devices) else "device"
