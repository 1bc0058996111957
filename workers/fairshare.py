"""Fair share: who goes next when devices free up.

Within a priority class, the queue is ordered by how much each team, then each user,
has used the devices lately: device-hours with an exponential decay (a half-life,
DIGITS_FAIR_SHARE_HALF_LIFE_DAYS, 7 by default as Slurm's PriorityDecayHalfLife). A
team that ran a lot last week waits behind one that did not; within a team, so do its
users; a user's own jobs keep their queue order. Nothing is reserved: an idle team's
share goes to whoever has work (the queue is work-conserving).

How usage is kept cheaply: every user has one accumulator (`FairShareUsage`: a value
in device-seconds as of a time). Each scheduling pass folds in the allocations released
since (and marks them charged); reading adds the decay since the accumulator's time and
the allocations still running. So a pass costs O(users + new releases), not O(history).

Teams are Django groups; a user in several is charged to the first one joined (lowest
id). A user in none is a team of one.

The ordering itself (`FairQueue`) is pure so the simulation in bench/fairshare.py runs
the very code the scheduler runs.
"""
from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .models import Allocation, FairShareUsage

LN2 = math.log(2)


def half_life_seconds() -> float:
    return float(settings.FAIR_SHARE_HALF_LIFE_DAYS) * 86400.0


def decayed(value: float, since: float, now: float, half_life: float) -> float:
    """`value` recorded at time `since` (seconds), as seen at `now`."""
    return value * 2.0 ** (-(now - since) / half_life) if now > since else value


def interval_usage(start: float, end: float, now: float, half_life: float) -> float:
    """Device-seconds of a device held from `start` to `end`, each second decayed by its
    age at `now`: the integral of 2^(-(now - t)/H) dt over [start, end]."""
    if end <= start:
        return 0.0
    scale = half_life / LN2
    return scale * (2.0 ** (-(now - end) / half_life) - 2.0 ** (-(now - start) / half_life))


# -- the usage the database holds --------------------------------------------------------


def fold_released(now: datetime | None = None) -> int:
    """Charge the allocations released since the last fold to their users' accumulators.
    Run by each scheduling pass (passes are serialised); returns how many it charged."""
    now = now or timezone.now()
    t = now.timestamp()
    h = half_life_seconds()
    with transaction.atomic():
        rows = list(
            Allocation.objects.select_for_update(skip_locked=True)
            .filter(charged=False, released_at__isnull=False)
            .values_list("pk", "owner_id", "started_at", "released_at")
        )
        if not rows:
            return 0
        added: dict[int, float] = defaultdict(float)
        for _, owner_id, started, released in rows:
            if started is not None and released is not None:  # never started: nothing used
                added[owner_id] += interval_usage(started.timestamp(), released.timestamp(), t, h)
        accounts = {a.user_id: a for a in FairShareUsage.objects.select_for_update().filter(user_id__in=list(added))}
        for owner_id, seconds in added.items():
            account = accounts.get(owner_id) or FairShareUsage(user_id=owner_id, device_seconds=0.0, at=now)
            account.device_seconds = decayed(account.device_seconds, account.at.timestamp(), t, h) + seconds
            account.at = now
            account.save()
        Allocation.objects.filter(pk__in=[r[0] for r in rows]).update(charged=True)
    return len(rows)


def usage_hours(now: datetime | None = None) -> dict[int, float]:
    """Each user's decayed device-hours as of `now`: the accumulator, what was released
    and not yet folded, and what is running."""
    now = now or timezone.now()
    t = now.timestamp()
    h = half_life_seconds()
    seconds: dict[int, float] = defaultdict(float)
    for user_id, value, at in FairShareUsage.objects.values_list("user_id", "device_seconds", "at"):
        seconds[user_id] += decayed(value, at.timestamp(), t, h)
    open_rows = Allocation.objects.filter(started_at__isnull=False).filter(
        Q(released_at__isnull=True) | Q(charged=False)
    ).values_list("owner_id", "started_at", "released_at")
    for owner_id, started, released in open_rows:
        if started is not None:  # (filtered on; the column is nullable)
            seconds[owner_id] += interval_usage(started.timestamp(), (released or now).timestamp(), t, h)
    return {user_id: s / 3600.0 for user_id, s in seconds.items()}


def teams_of() -> dict[int, int]:
    """user id -> the team (group id) charged for their work, for every user in a team;
    absent: a team of one. (Memberships are few: one read per pass.)"""
    through = get_user_model().groups.through
    out: dict[int, int] = {}
    for user_id, group_id in through.objects.order_by("group_id").values_list("user_id", "group_id"):
        out.setdefault(user_id, group_id)
    return out


def weekly_device_hours(now: datetime | None = None) -> dict[int, float]:
    """Device-hours each user's jobs held in the last 7 days (no decay: for quotas)."""
    now = now or timezone.now()
    week_ago = now - timedelta(days=7)
    hours: dict[int, float] = defaultdict(float)
    rows = Allocation.objects.filter(started_at__isnull=False).filter(
        Q(released_at__isnull=True) | Q(released_at__gt=week_ago)
    ).values_list("owner_id", "started_at", "released_at")
    for owner_id, started, released in rows:
        if started is None:  # (filtered on; the column is nullable)
            continue
        begin, end = max(started, week_ago), released or now
        if end > begin:
            hours[owner_id] += (end - begin).total_seconds() / 3600.0
    return hours


# -- the order ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Waiting:
    """What the order needs of a queued job."""

    pk: int
    owner_id: int
    priority: int
    position: float
    need: int


@dataclass
class FairQueue:
    """Queued jobs in fair-share order. `pop()` gives the next job to try; `charge(job,
    hours)` counts a job that starts against its user and team (so one pass spreads free
    devices over users, not all to the one who was behind). A job that is passed over
    (no device fits it) is simply not charged."""

    jobs: Iterable[Waiting]
    usage: dict[int, float]  # user id -> decayed device-hours
    team_of: dict[int, int] = field(default_factory=dict)
    _by_user: dict[int, list[tuple[int, float, int, Waiting]]] = field(init=False, default_factory=dict)
    _team_usage: dict[object, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        by_user: dict[int, list[tuple[int, float, int, Waiting]]] = defaultdict(list)
        for job in self.jobs:
            by_user[job.owner_id].append((-job.priority, job.position, job.pk, job))
        for queue in by_user.values():
            heapq.heapify(queue)
        self._by_user = dict(by_user)
        team_usage: dict[object, float] = defaultdict(float)
        for user_id, hours in self.usage.items():
            team_usage[self.team(user_id)] += hours
        self._team_usage = team_usage

    def team(self, user_id: int) -> object:
        team = self.team_of.get(user_id)
        return ("team", team) if team is not None else ("user", user_id)

    def _key(self, user_id: int) -> tuple[int, float, float, float, int]:
        minus_priority, position, pk, _ = self._by_user[user_id][0]
        return (minus_priority, self._team_usage[self.team(user_id)], self.usage.get(user_id, 0.0), position, pk)

    def pop(self) -> Waiting | None:
        if not self._by_user:
            return None
        user_id = min(self._by_user, key=self._key)
        queue = self._by_user[user_id]
        job = heapq.heappop(queue)[3]
        if not queue:
            del self._by_user[user_id]
        return job

    def charge(self, job: Waiting, hours: float) -> None:
        self.usage[job.owner_id] = self.usage.get(job.owner_id, 0.0) + hours
        self._team_usage[self.team(job.owner_id)] += hours

    def __iter__(self) -> Iterator[Waiting]:
        """Every job, in the order they would start if each started in turn."""
        while (job := self.pop()) is not None:
            self.charge(job, job.need * START_CHARGE_HOURS)
            yield job


# What starting a job counts for, within one pass (or one preview of the order): one
# device-second per device. Enough to break ties between users who used nothing (they
# alternate), far too small to outweigh any real difference in usage.
START_CHARGE_HOURS = 1.0 / 3600.0
