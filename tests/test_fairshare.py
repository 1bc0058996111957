"""Fair share and quotas: the decay arithmetic and the order (pure), then the scheduler
on real Postgres choosing between users by their decayed usage, teams, and the weekly
and per-team quotas with the reasons the queue shows."""
from __future__ import annotations

import math
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from tests.factories import make_dataset
from tests.test_scheduler import device, queue, running
from workers import fairshare
from workers.fairshare import FairQueue, Waiting, decayed, interval_usage
from workers.models import Allocation, DeviceLimit, FairShareUsage, Job, Priority, TeamLimit
from workers.scheduler import schedule_pass, wait_reason

HOUR = 3600.0
WEEK = 7 * 86400.0


def test_decay_halves_per_half_life_and_the_integral_is_exact() -> None:
    assert decayed(8.0, 0.0, WEEK, WEEK) == pytest.approx(4.0)
    assert decayed(8.0, 0.0, 3 * WEEK, WEEK) == pytest.approx(1.0)
    # One device for one hour, ending now: a little less than 3600 s (2^(-1/168) = 0.9959
    # for the oldest second: older seconds weigh less).
    now = 10 * WEEK
    fresh = interval_usage(now - HOUR, now, now, WEEK)
    assert 3590.0 < fresh < 3600.0
    steps = 20000  # the integral against a midpoint sum
    numeric = sum(2 ** (-(now - (now - HOUR + (i + 0.5) * HOUR / steps)) / WEEK) for i in range(steps)) * HOUR / steps
    assert fresh == pytest.approx(numeric, rel=1e-9)
    # The same hour a half-life ago counts half; split in two it adds up the same.
    assert interval_usage(now - WEEK - HOUR, now - WEEK, now, WEEK) == pytest.approx(fresh / 2)
    mid = now - HOUR / 2
    assert interval_usage(now - HOUR, mid, now, WEEK) + interval_usage(mid, now, now, WEEK) == pytest.approx(fresh)
    # Folding (decaying what was counted earlier) gives the same as counting it now.
    counted_then = interval_usage(now - 2 * HOUR, now - HOUR, now - HOUR, WEEK)
    assert decayed(counted_then, now - HOUR, now, WEEK) == pytest.approx(interval_usage(now - 2 * HOUR, now - HOUR, now, WEEK))
    assert interval_usage(5.0, 5.0, now, WEEK) == 0.0 and math.isfinite(interval_usage(0.0, now, now, WEEK))


def jobs(owner: int, count: int, priority: int = 10, start: float = 0.0) -> list[Waiting]:
    return [Waiting(pk=owner * 100 + i, owner_id=owner, priority=priority, position=start + i, need=1) for i in range(count)]


def test_the_order_prefers_the_lighter_user_keeps_each_users_order_and_priority_first() -> None:
    # User 1 submitted first and more, but used 10 device-hours lately; user 2 used 1.
    order = [(w.owner_id, w.pk) for w in FairQueue(jobs(1, 3) + jobs(2, 2, start=10.0), {1: 10.0, 2: 1.0})]
    assert [o for o, _ in order][:2] == [2, 2] and [pk for o, pk in order if o == 1] == [100, 101, 102]
    # Equal usage (none): they alternate, each in their own order.
    assert [w.pk for w in FairQueue(jobs(1, 3) + jobs(2, 3, start=10.0), {})] == [100, 200, 101, 201, 102, 202]
    # A higher priority goes first whatever the usage.
    urgent = [Waiting(pk=999, owner_id=1, priority=Priority.URGENT, position=50.0, need=1)]
    assert next(iter(FairQueue(jobs(2, 2) + urgent, {1: 100.0}))).pk == 999
    # Passed over (not charged): the same user stays first for the next job.
    queue_ = FairQueue(jobs(1, 2) + jobs(2, 2, start=10.0), {})
    first = queue_.pop()
    assert first is not None and first.owner_id == 1
    second = queue_.pop()
    assert second is not None and second.owner_id == 1


def test_teams_are_fair_first_then_their_users() -> None:
    # Users 1 and 2 form team 7 (5 + 5 h); user 3, alone, used 6 h: user 3 goes first,
    # although each of the team's users used less than user 3.
    queue_ = FairQueue(jobs(1, 1) + jobs(2, 1) + jobs(3, 1), {1: 5.0, 2: 4.0, 3: 6.0}, {1: 7, 2: 7})
    assert [w.owner_id for w in queue_] == [3, 2, 1]


@pytest.mark.django_db
def test_folding_released_allocations_keeps_usage_and_charges_once(owner, teammate) -> None:
    dev = device("fold", 0)
    now = timezone.now()
    a = Allocation.objects.create(job=None, job_name="past", owner=owner, device=dev, attempt=1, rank=0, world_size=1,
                                  started_at=now - timedelta(hours=3), released_at=now - timedelta(hours=1), outcome="done")
    before = fairshare.usage_hours(now)
    exact = interval_usage((now - timedelta(hours=3)).timestamp(), (now - timedelta(hours=1)).timestamp(), now.timestamp(), WEEK)
    assert before[owner.pk] == pytest.approx(exact / 3600, rel=1e-9) and 1.98 < before[owner.pk] < 2.0
    assert teammate.pk not in before
    assert fairshare.fold_released(now) == 1 and fairshare.fold_released(now) == 0
    assert fairshare.usage_hours(now)[owner.pk] == pytest.approx(before[owner.pk], rel=1e-9)
    assert Allocation.objects.get(pk=a.pk).charged
    # A week later it counts half.
    assert fairshare.usage_hours(now + timedelta(days=7))[owner.pk] == pytest.approx(before[owner.pk] / 2, rel=1e-6)
    assert FairShareUsage.objects.get(user=owner).device_seconds == pytest.approx(before[owner.pk] * 3600, rel=1e-9)


def fresh(job: Job) -> Job:
    return Job.objects.get(pk=job.pk)


def _past_use(user, hours: float, dev) -> None:
    now = timezone.now()
    Allocation.objects.create(job=None, job_name="history", owner=user, device=dev, attempt=1, rank=0, world_size=1,
                              started_at=now - timedelta(hours=hours + 1), released_at=now - timedelta(hours=1), outcome="done")


@pytest.mark.django_db(transaction=True)
def test_the_user_who_used_less_starts_first(fake_devices, owner, teammate) -> None:
    dataset = make_dataset(owner)
    only = device("fs", 0, enabled=False)  # nothing starts while the queue fills
    _past_use(owner, 20.0, device("old", 9, enabled=False))
    mine = [queue(owner, dataset, f"mine-{i}") for i in range(2)]
    theirs = queue(teammate, dataset, "theirs")  # submitted last
    reason = wait_reason(fresh(theirs))
    assert (reason["ahead"], reason["position"]) == (0, 1)
    assert wait_reason(fresh(mine[0]))["ahead"] == 1
    only.enabled = True
    only.save()
    assert schedule_pass() == 1
    assert running(theirs) == ["fs/cpu0"] and not running(mine[0])


@pytest.mark.django_db(transaction=True)
def test_quotas_per_user_and_team_hold_jobs_back_with_the_reason(fake_devices, owner, teammate, settings) -> None:
    dataset = make_dataset(owner)
    device("q", 0)
    device("q", 1)
    old = device("old", 9, enabled=False)
    _past_use(owner, 5.0, old)
    DeviceLimit.objects.create(user=owner, max_devices=0, max_device_hours_per_week=4.0)
    over = queue(owner, dataset, "over")
    assert schedule_pass() == 0 and not running(over)
    assert "Over your weekly quota: 5.0 of 4 device-hours used in the last 7 days" in wait_reason(fresh(over))["reason"]
    # The override raised: it starts.
    DeviceLimit.objects.filter(user=owner).update(max_device_hours_per_week=0)
    assert schedule_pass() == 1 and running(over)
    # A team of two that may hold one device: the teammate's job waits for the owner's.
    team = Group.objects.create(name="vision")
    owner.groups.add(team)
    teammate.groups.add(team)
    TeamLimit.objects.create(team=team, max_devices=1)
    second = queue(teammate, dataset, "second")
    assert schedule_pass() == 0 and not running(second)
    assert "Waiting for team vision's other jobs: it may hold 1 devices at once and holds 1" in wait_reason(fresh(second))["reason"]
    # The team's weekly hours: 5 h used of 3 allowed, also once the device limit goes.
    TeamLimit.objects.filter(team=team).update(max_devices=0, max_device_hours_per_week=3.0)
    assert schedule_pass() == 0
    assert "Over team vision's weekly quota" in wait_reason(fresh(second))["reason"]
    TeamLimit.objects.filter(team=team).update(max_device_hours_per_week=0)
    assert schedule_pass() == 1 and running(second)
    # The site-wide default applies to users without an override.
    _past_use(teammate, 1.0, old)
    settings.USER_DEVICE_HOURS_PER_WEEK = 0.5
    third = queue(teammate, dataset, "third")
    device("q", 2)
    assert schedule_pass() == 0 and "Over your weekly quota" in wait_reason(fresh(third))["reason"]


@pytest.mark.django_db(transaction=True)
def test_a_pass_reads_past_the_first_jobs_of_a_user_when_none_of_them_fit(fake_devices, owner) -> None:
    """A pass looks at the first few jobs of each user (4 per free device + 16); when they
    are all passed over (too big) and devices stay free, it reads the rest of the queue."""
    dataset = make_dataset(owner)
    only = device("one", 0, enabled=False)
    too_big = [queue(owner, dataset, f"big-{i}", devices=2, multi_host=True) for i in range(21)]
    fits = queue(owner, dataset, "fits")
    device("two", 0, enabled=False)  # so that 2-device jobs are valid; never enabled
    only.enabled = True
    only.save()
    assert schedule_pass() == 1
    assert running(fits) == ["one/cpu0"] and not any(running(j) for j in too_big)


@pytest.mark.django_db
def test_admins_set_quotas_and_see_fair_share_on_the_console_and_the_api(owner, teammate, admin_user) -> None:
    from django.test import Client

    from tests.conftest import token_client

    team = Group.objects.create(name="speech")
    teammate.groups.add(team)
    _past_use(teammate, 3.0, device("hist", 0, enabled=False))
    admin = Client()
    admin.force_login(admin_user)
    admin.post(f"/cluster/limits/{teammate.pk}/", {"max_devices": "", "max_device_hours_per_week": "12.5"})
    limit = DeviceLimit.objects.get(user=teammate)
    assert (limit.max_devices, limit.max_device_hours_per_week) == (None, 12.5)
    refused = admin.post(f"/cluster/limits/{teammate.pk}/", {"max_devices": "two"}, follow=True)
    assert "A limit is a number" in refused.content.decode()
    admin.post(f"/cluster/teams/{team.pk}/", {"max_devices": "4", "max_device_hours_per_week": ""})
    assert TeamLimit.objects.filter(team=team, max_devices=4, max_device_hours_per_week=0).exists()
    page = admin.get("/cluster/").content.decode()
    assert f'data-team="{team.pk}"' in page and "speech" in page and "Fair-share usage" in page
    api = token_client(admin_user)
    usage = api.get("/api/usage/").json()
    row = next(r for r in usage["limits"] if r["user"] == teammate.username)
    assert row["team"] == "speech" and row["hours_limit"] == 12.5 and row["hours_override"] and not row["override"]
    assert 2.9 < row["week_hours"] <= 3.0 and 2.9 < row["fair_share_hours"] < 3.0
    team_row = next(t for t in usage["teams"] if t["team"] == "speech")
    assert (team_row["members"], team_row["max_devices"]) == (1, 4) and team_row["week_hours"] == row["week_hours"]
    # The API replaces both limits; both empty: back to the defaults; both 0 for a team: no quota.
    assert api.put(f"/api/users/{teammate.pk}/device-limit/", {"max_devices": 2}, format="json").status_code == 204
    limit = DeviceLimit.objects.get(user=teammate)
    assert (limit.max_devices, limit.max_device_hours_per_week) == (2, None)
    assert api.put(f"/api/users/{teammate.pk}/device-limit/", {"max_devices": None}, format="json").status_code == 204
    assert not DeviceLimit.objects.filter(user=teammate).exists()
    # A run's time limit per user, on the console: kept while the other two go back to the defaults.
    admin.post(f"/cluster/limits/{teammate.pk}/", {"max_devices": "", "max_device_hours_per_week": "", "max_job_hours": "2"})
    limit = DeviceLimit.objects.get(user=teammate)
    assert (limit.max_devices, limit.max_device_hours_per_week, limit.max_job_hours) == (None, None, 2.0)
    from workers.errors import JobError
    from workers.services import placement_check

    assert placement_check(teammate).time_limit_seconds == 7200.0  # their default now
    with pytest.raises(JobError, match="at most 2 h"):
        placement_check(teammate, time_limit_hours=3)
    bad = api.put(f"/api/teams/{team.pk}/limit/", {"max_device_hours_per_week": -1}, format="json")
    assert bad.status_code == 400 and "max_device_hours_per_week" in bad.json()["errors"]
    assert api.put(f"/api/teams/{team.pk}/limit/", {"max_devices": 0}, format="json").status_code == 204
    assert not TeamLimit.objects.filter(team=team).exists()
    # Not an admin: refused.
    assert token_client(owner).put(f"/api/teams/{team.pk}/limit/", {"max_devices": 1}, format="json").status_code == 403


@pytest.mark.django_db(transaction=True)
def test_the_queue_estimates_when_each_job_starts(fake_devices, owner) -> None:
    """Devices free at their running jobs' ETAs; each queued job holds them for as long as
    the last run of its network on its dataset took per epoch; a job with nothing to go by
    holds its device for good in the replay, so what waits for that device has no estimate."""
    from models_app.models import TrainedModel
    from tests.factories import make_model

    dataset = make_dataset(owner)
    now = timezone.now()
    past = make_model(owner, dataset, name="past", epochs=2)
    Job.objects.filter(pk=past.pk).update(started_at=now - timedelta(seconds=400), finished_at=now - timedelta(seconds=100))
    device("e", 0)
    device("e", 1)
    first, second = queue(owner, dataset, "first"), queue(owner, dataset, "second")
    assert running(first) and running(second)
    Job.objects.filter(pk=first.pk).update(eta_seconds=600)
    Job.objects.filter(pk=second.pk).update(eta_seconds=1200)
    j1, j2, j3, j4 = (queue(owner, dataset, name) for name in ("j1", "j2", "j3", "j4"))
    both = queue(owner, dataset, "both", devices=2)
    TrainedModel.objects.filter(pk=j2.pk).update(network="alexnet")  # never run: no estimate
    run = 150.0 * TrainedModel.objects.get(pk=j1.pk).epochs  # 300 s for 2 epochs

    def starts_in(job: Job) -> float | None:
        start = wait_reason(fresh(job))["estimated_start"]
        return None if start is None else (start - timezone.now()).total_seconds()

    assert starts_in(j1) == pytest.approx(600, abs=30)
    assert starts_in(j2) == pytest.approx(min(600 + run, 1200), abs=30)
    assert starts_in(j3) == pytest.approx(max(600 + run, 1200), abs=30)
    assert starts_in(j4) == pytest.approx(max(600 + run, 1200) + run, abs=30)
    assert starts_in(both) is None  # one of the two devices is j2's for as long as anyone can tell
    # The job page and the API say it too.
    from tests.conftest import token_client

    queued = token_client(owner).get(f"/api/models/{j1.pk}/").json()["job"]["queue"]
    assert queued["position"] == 1 and queued["estimated_start"] is not None
    assert token_client(owner).get(f"/api/models/{both.pk}/").json()["job"]["queue"]["estimated_start"] is None
