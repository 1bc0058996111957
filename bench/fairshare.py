"""Fair-share benchmark: do shares converge, and what does one scheduling pass cost?

    .venv/bin/python -m bench.fairshare            # 24 simulated hours; 10,000 queued jobs, 64 devices
    .venv/bin/python -m bench.fairshare --quick    # 2,000 queued jobs

1. Fairness, simulated: two users keep the queue full, user A submitting 3 jobs for each
   of user B's, on 8 devices for 24 simulated hours; each job holds one device for 15 to
   90 minutes (the same random draw for both users). The order is the scheduler's own
   `FairQueue` with the usage arithmetic of workers/fairshare.py, on a simulated clock.
   Baseline, same run and same submissions: first come, first served (the queue before
   fair share), where A gets about 3/4. Goal: each user's device-hour share within 10 % of
   50/50 (so 45..55 %).
2. One scheduling pass, real database (SQLite in a temporary folder as `make run`, or
   Postgres with BENCH_DATABASE_URL): N queued jobs of 20 users, 64 devices all busy
   and 5,000 allocations of history; then 30 times: one device frees, one pass places one
   job. p50/p95 of the pass, and the ratio to a baseline measured in the same run:
   reading the queue's rows alone. Goal: p95 < 100 ms.
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import time

from bench.harness import isolated_django

if os.environ.get("BENCH_DATABASE_URL"):
    os.environ["DATABASE_URL"] = os.environ["BENCH_DATABASE_URL"]
WORK = isolated_django("digits-bench-fair-")

from workers.fairshare import FairQueue, Waiting, interval_usage  # noqa: E402

HOUR = 3600.0


def simulate(fair: bool, hours: float = 24.0, devices: int = 8, seed: int = 1) -> dict[int, float]:
    """Device-hours per user (1 = A, 2 = B) over `hours` simulated hours."""
    rng = random.Random(seed)
    half_life = 7 * 86400.0
    next_pk = 0
    position = 0.0
    waiting: list[Waiting] = []
    durations: dict[int, float] = {}

    def submit(user: int) -> None:
        nonlocal next_pk, position
        next_pk += 1
        position += 1.0
        waiting.append(Waiting(pk=next_pk, owner_id=user, priority=10, position=position, need=1))
        durations[next_pk] = rng.uniform(0.25, 1.5) * HOUR

    def top_up() -> None:  # both always have work: A submits 3 for each of B's
        while sum(1 for w in waiting if w.owner_id == 2) < 8:
            for _ in range(3):
                submit(1)
            submit(2)

    done: list[tuple[int, float, float]] = []  # (user, start, end), finished or running
    running: list[tuple[float, int]] = []  # (end time, device)
    free = list(range(devices))
    now = 0.0
    end_of_run = hours * HOUR
    while now < end_of_run:
        top_up()
        usage: dict[int, float] = {}
        for user, start, end in done:
            usage[user] = usage.get(user, 0.0) + interval_usage(start, min(end, now), now, half_life) / HOUR
        if fair:
            order = FairQueue(waiting, usage)
            picked = []
            for _ in free:
                job = order.pop()
                assert job is not None
                order.charge(job, 1 / 3600)
                picked.append(job)
        else:
            picked = sorted(waiting, key=lambda w: w.position)[: len(free)]
        for device, job in zip(free, picked):
            waiting.remove(job)
            end = now + durations[job.pk]
            done.append((job.owner_id, now, end))
            running.append((end, device))
        free = []
        running.sort()
        end, device = running.pop(0)
        free.append(device)
        while running and running[0][0] == end:
            free.append(running.pop(0)[1])
        now = end
    shares: dict[int, float] = {1: 0.0, 2: 0.0}
    for user, start, end in done:
        shares[user] += max(0.0, min(end, end_of_run) - start) / HOUR
    return shares


def pass_times(queued: int, passes: int = 30) -> tuple[list[float], list[float]]:
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.utils import timezone

    from tests.factories import make_dataset
    from workers.models import Allocation, Device, Job, JobStatus
    from workers.scheduler import queued_jobs, schedule_pass

    call_command("prepare")  # data folders, secret key, tables
    users = [get_user_model().objects.create_user(f"u{i}", password="x") for i in range(20)]
    dataset = make_dataset(users[0], name="bench")
    now = timezone.now()
    devices = Device.objects.bulk_create(
        Device(uuid=f"fair-{i}", host=f"h{i // 8}", address="127.0.0.1", kind="cpu", index=i % 8, name="bench", last_seen=now)
        for i in range(64)
    )
    # History: 5,000 finished allocations over the last 30 days, already folded but one in ten.
    rng = random.Random(2)
    history = []
    for i in range(5000):
        start = now - timezone.timedelta(hours=rng.uniform(1, 720))
        history.append(Allocation(
            job=None, job_name="old", owner=users[i % 20], device=devices[i % 64], attempt=1, rank=0, world_size=1,
            started_at=start, released_at=start + timezone.timedelta(hours=rng.uniform(0.1, 1)), outcome="done",
            charged=i % 10 != 0,
        ))
    Allocation.objects.bulk_create(history)
    # Every device busy with a running job; then the queue.
    runners = Job.objects.bulk_create(
        Job(kind="model", name=f"run{i}", owner=users[i % 20], status=JobStatus.RUNNING, attempt=1) for i in range(64)
    )
    Allocation.objects.bulk_create(
        Allocation(job=j, job_name=j.name, owner_id=j.owner_id, device=d, attempt=1, rank=0, world_size=1, started_at=now)
        for j, d in zip(runners, devices)
    )
    jobs = Job.objects.bulk_create(
        Job(kind="model", name=f"q{i}", owner=users[i % 20], status=JobStatus.QUEUED, queued_at=now, queue_position=float(i))
        for i in range(queued)
    )
    from models_app.models import TrainedModel  # the rows the model kind's blocked() reads

    TrainedModel.objects.bulk_create(TrainedModel(job=j, dataset=dataset, network="lenet", epochs=1) for j in jobs)
    # A worker's scheduling pass runs in a process that holds no 20,000 model instances:
    # neither should this one, or each full garbage collection walks them all.
    del jobs, history
    gc.collect()
    times, baseline = [], []
    for i in range(passes):
        Allocation.objects.filter(job=runners[i]).update(released_at=timezone.now(), outcome="done")
        began = time.perf_counter()
        list(queued_jobs().filter(held=False).values_list("pk", "owner_id", "priority", "queue_position", "devices_requested"))
        baseline.append(time.perf_counter() - began)
        began = time.perf_counter()
        placed = schedule_pass()
        times.append(time.perf_counter() - began)
        if placed != 1:
            raise SystemExit(f"pass {i} placed {placed} jobs, not 1")
    import redis

    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()  # the rank messages no worker will take
    return times, baseline


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    fair, fifo = simulate(True), simulate(False)
    for name, shares in (("fair share", fair), ("first come (baseline)", fifo)):
        total = sum(shares.values())
        print(f"{name:>22}: A {shares[1] / total:6.1%}  B {shares[2] / total:6.1%}  of {total:.0f} device-hours")
    a_share = fair[1] / sum(fair.values())
    print(f"fair share within 10 % of 50/50: {'yes' if 0.45 <= a_share <= 0.55 else 'NO'} (A {a_share:.1%})")
    queued = 2000 if args.quick else 10000
    times, baseline = pass_times(queued)
    p50, p95 = statistics.median(times), percentile(times, 0.95)
    b50 = statistics.median(baseline)
    print(f"one pass, {queued} queued jobs, 64 devices: p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms "
          f"(reading the queue's rows alone: {b50 * 1000:.1f} ms; ratio {p50 / b50:.1f}x); goal p95 < 100 ms: "
          f"{'yes' if p95 < 0.1 else 'NO'}")


if __name__ == "__main__":
    main()
