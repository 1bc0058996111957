"""Scheduler benchmark: submit-to-start latency and jobs dispatched per second.

    .venv/bin/python -m bench.scheduler            # 1,000 queued jobs
    .venv/bin/python -m bench.scheduler --jobs 200

Real parts: two CPU device workers (Celery, each on its own queue), the services the
web and API call, Redis (db 12) and the database (SQLite in a temporary folder, as
`make run`; Postgres when BENCH_DATABASE_URL is set). Each job's rank runs
`bench.noop_train` instead of the training module, so what is timed is the scheduling
path: queue -> pass -> allocation -> Celery message -> worker claim -> child -> release.

  1. latency on an idle device: jobs submitted one at a time, each once the previous is
     done; submit-to-start = the job's RUNNING time minus the moment `model_create` was
     called. Baseline, same run: a Celery control ping round trip to the same worker
     (the least any message-driven start can cost).
  2. end-to-end throughput: N jobs queued at once while both devices are drained, then
     both enabled: jobs dispatched (and finished) per second, bound by each job's own
     turnaround on 2 devices.
  3. the scheduler alone: N jobs queued against N device rows (no workers), one pass:
     jobs placed per second.
Target: p95 submit-to-start under 1 s.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORK = Path(tempfile.mkdtemp(prefix="digits-bench-sched-"))
os.environ.update(
    DJANGO_SETTINGS_MODULE="digits_site.settings",
    DIGITS_DATA_DIR=str(WORK / "data"),
    DIGITS_DATA_ROOTS=str(WORK / "images"),
    REDIS_URL=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12"),
    CUDA_VISIBLE_DEVICES="",
    DIGITS_TRAINING_MODULE="bench.noop_train",
    DIGITS_CPU_DEVICES="2",
    DIGITS_DEVICE_HEARTBEAT_SECONDS="1",
    LOG_LEVEL="WARNING",
)
os.environ.pop("DATABASE_URL", None)
if os.environ.get("BENCH_DATABASE_URL"):
    os.environ["DATABASE_URL"] = os.environ["BENCH_DATABASE_URL"]

import django  # noqa: E402
import psutil  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.utils import timezone  # noqa: E402

from datasets.models import Dataset  # noqa: E402
from digits_site.celery import app  # noqa: E402
from models_app.services import model_create  # noqa: E402
from workers.models import Device, Job, JobStatus  # noqa: E402
from workers.scheduler import live_devices, schedule, schedule_pass  # noqa: E402
from workers.services import job_abort  # noqa: E402


def start_workers() -> list[subprocess.Popen]:
    procs = []
    for index in range(2):
        log = (WORK / f"cpu{index}.log").open("w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "digits_site", "worker", "-c", "1", "--loglevel", "WARNING",
             "-n", f"cpu{index}@%h", "--without-mingle", "--without-gossip"],
            cwd=ROOT, env={**os.environ, "DIGITS_DEVICE": f"cpu:{index}"}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        ))
    deadline = time.monotonic() + 60
    while live_devices().count() < 2:
        if time.monotonic() > deadline:
            raise SystemExit(f"the device workers did not register; see {WORK}")
        time.sleep(0.2)
    return procs


def fake_dataset(owner) -> Dataset:
    job = Job.objects.create(kind="dataset", name="bench", owner=owner, status=JobStatus.DONE)
    return Dataset.objects.create(
        job=job, folder="/nowhere", labels=["a", "b"], counts={"train": 8, "val": 2}, image_width=28, image_height=28,
        class_counts={"train": [4, 4], "val": [1, 1]},
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def wait_all_finished(ids: list[int], timeout: float, *, done: bool = True) -> None:
    """Until every job has ended; with `done`, each must have succeeded."""
    deadline = time.monotonic() + timeout
    while Job.objects.filter(pk__in=ids).exclude(status__in=JobStatus.finished()).exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"jobs did not finish in {timeout:.0f}s; see {WORK}")
        time.sleep(0.05)
    failed = Job.objects.filter(pk__in=ids).exclude(status=JobStatus.DONE).first()
    if done and failed:
        raise SystemExit(f"job {failed.pk} ended {failed.status}: {failed.error}")


def latency(owner, dataset, count: int) -> list[float]:
    out = []
    for i in range(count):
        submitted = timezone.now()
        model = model_create(owner=owner, name=f"lat{i}", dataset=dataset, epochs=1)
        wait_all_finished([model.pk], 60)
        job = Job.objects.get(pk=model.pk)
        out.append((job.started_at - submitted).total_seconds())
    return out


def ping_round_trips(count: int) -> list[float]:
    out = []
    for _ in range(count):
        began = time.perf_counter()
        replies = app.control.ping(destination=[f"cpu0@{os.uname().nodename}"], timeout=2)
        if replies:
            out.append(time.perf_counter() - began)
    return out


def throughput(owner, dataset, count: int) -> tuple[float, float]:
    Device.objects.update(enabled=False)
    ids = [model_create(owner=owner, name=f"tp{i}", dataset=dataset, epochs=1).pk for i in range(count)]
    began = time.monotonic()
    Device.objects.update(enabled=True)
    schedule()
    deadline = time.monotonic() + 3600
    while Job.objects.filter(pk__in=ids, dispatched_at__isnull=True).exists():
        if time.monotonic() > deadline:
            raise SystemExit("throughput run timed out")
        time.sleep(0.05)
    dispatched = time.monotonic() - began
    wait_all_finished(ids, 3600)
    finished = time.monotonic() - began
    return count / dispatched, count / finished


def child_of(job_id: int) -> psutil.Process | None:
    for proc in psutil.process_iter(["cmdline"]):
        if f"/jobs/{job_id}/spec" in " ".join(proc.info["cmdline"] or []):
            return proc
    return None


def abort_latency(owner, dataset, count: int) -> tuple[list[float], list[float]]:
    """Abort (the service the page and the API call) a running job, timed until its child's
    process group is gone; and, as the baseline, a direct SIGTERM of the same kind of child."""
    aborts, direct = [], []
    for i in range(count):
        model = model_create(owner=owner, name=f"abort{i}", dataset=dataset, epochs=1000)
        deadline = time.monotonic() + 60
        while (child := child_of(model.pk)) is None:
            if time.monotonic() > deadline:
                raise SystemExit(f"the child of job {model.pk} did not start; see {WORK}")
            time.sleep(0.02)
        time.sleep(0.3)  # running and reporting
        group = os.getpgid(child.pid)
        began = time.perf_counter()
        job_abort(Job.objects.get(pk=model.pk))
        while any(p.info["pid"] for p in psutil.process_iter(["pid"]) if _in_group(p, group)):
            time.sleep(0.005)
        aborts.append(time.perf_counter() - began)
        # Baseline: the same child started by hand, ended with a signal to its group.
        proc = subprocess.Popen([sys.executable, "-m", "bench.noop_train", "--spec", str(WORK / "long.json")],
                                cwd=ROOT, stdout=subprocess.DEVNULL, start_new_session=True)
        time.sleep(0.3)
        began = time.perf_counter()
        os.killpg(proc.pid, 15)
        proc.wait()
        direct.append(time.perf_counter() - began)
        wait_all_finished([model.pk], 30, done=False)  # aborted
    return aborts, direct


def _in_group(proc: psutil.Process, group: int) -> bool:
    try:
        return os.getpgid(proc.info["pid"]) == group and proc.status() != psutil.STATUS_ZOMBIE
    except (ProcessLookupError, psutil.Error):
        return False


def scheduler_alone(owner, dataset, count: int) -> float:
    """One pass placing `count` queued jobs on `count` device rows that no worker serves."""
    for proc in WORKERS:
        os.killpg(proc.pid, 19)  # SIGSTOP: their heartbeats must not run passes meanwhile
    try:
        now = timezone.now()
        Device.objects.update(enabled=False)
        Device.objects.bulk_create(
            Device(uuid=f"bench-{i}", host=f"h{i // 8}", address="127.0.0.1", kind="cpu", index=i % 8, name="bench",
                   last_seen=now, enabled=False)
            for i in range(count)
        )
        ids = [model_create(owner=owner, name=f"s{i}", dataset=dataset, epochs=1).pk for i in range(count)]
        Device.objects.filter(uuid__startswith="bench-").update(last_seen=timezone.now(), enabled=True)
        began = time.perf_counter()
        placed = schedule_pass()
        elapsed = time.perf_counter() - began
        if placed != count or Job.objects.filter(pk__in=ids, dispatched_at__isnull=True).exists():
            raise SystemExit(f"the pass placed {placed} of {count} jobs")
        return count / elapsed
    finally:
        for proc in WORKERS:
            os.killpg(proc.pid, 18)  # SIGCONT


WORKERS: list[subprocess.Popen] = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--latency-jobs", type=int, default=100)
    parser.add_argument("--abort-jobs", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (datasets, snapshots, logs)")
    args = parser.parse_args()
    import redis

    try:
        redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    except redis.RedisError as exc:
        raise SystemExit(f"Redis is not reachable at {os.environ['REDIS_URL']} ({exc}): start redis-server or set BENCH_REDIS_URL.") from None
    call_command("prepare")  # data folders, secret key, tables
    owner = get_user_model().objects.create_user("bench", password="bench-only")
    dataset = fake_dataset(owner)
    WORKERS.extend(start_workers())
    try:
        latency(owner, dataset, 3)  # warm-up: imports, connections
        pings = ping_round_trips(args.latency_jobs)
        lat = latency(owner, dataset, args.latency_jobs)
        (WORK / "long.json").write_text(json.dumps({"epochs": 1000}))
        aborts, direct = abort_latency(owner, dataset, args.abort_jobs)
        dispatch_rate, finish_rate = throughput(owner, dataset, args.jobs)
        alone = scheduler_alone(owner, dataset, args.jobs)
    finally:
        for proc in WORKERS:
            os.killpg(proc.pid, 15)
        for proc in WORKERS:
            proc.wait(30)
        if not args.keep:  # datasets, snapshots and logs: hundreds of MB otherwise left in /tmp
            shutil.rmtree(WORK, ignore_errors=True)
    db = "Postgres" if os.environ.get("DATABASE_URL") else "SQLite"
    p50, p95, ping50 = statistics.median(lat), percentile(lat, 0.95), statistics.median(pings)
    print(f"\n{db}, 2 CPU device workers, {args.latency_jobs} latency jobs, {args.jobs} queued jobs")
    print(f"submit-to-start on an idle device: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms"
          f"  (target p95 < 1000 ms: {'met' if p95 < 1 else 'MISSED'})")
    print(f"baseline, Celery control ping round trip: p50 {ping50 * 1000:.1f} ms -> latency p50 / ping p50 = {p50 / ping50:.1f}x")
    a50, a95, d50 = statistics.median(aborts), percentile(aborts, 0.95), statistics.median(direct)
    print(f"abort, request to process group gone ({len(aborts)} jobs): p50 {a50 * 1000:.0f} ms, p95 {a95 * 1000:.0f} ms, "
          f"max {max(aborts) * 1000:.0f} ms; baseline, SIGTERM of the group by hand: p50 {d50 * 1000:.1f} ms -> {a50 / d50:.0f}x")
    print(f"{args.jobs} queued jobs on 2 devices: {dispatch_rate:.1f} dispatched/s, {finish_rate:.1f} finished/s "
          f"(each job's own turnaround bounds this)")
    print(f"scheduler alone, one pass placing {args.jobs} jobs on {args.jobs} devices: {alone:.0f} jobs/s "
          f"({alone / dispatch_rate:.0f}x the end-to-end rate)")
    print(f"(work folder {WORK}{'' if args.keep else ', removed; --keep keeps it'})")


if __name__ == "__main__":
    main()
