"""Preemption benchmark: how soon an urgent job trains on a device that a preemptible job
holds, and how many of that job's steps it costs.

    .venv/bin/python -m bench.preemption            # 3 rounds
    .venv/bin/python -m bench.preemption --runs 5

Real parts: one CPU device worker (Celery, the zygote, the trainer child), Redis (db 12)
and the database (SQLite in a temporary folder, as `make run`). Each round:
  1. baseline, same run: an urgent LeNet job submitted to the idle device: submit to its
     first training step (its RUNNING time plus the start-up its child reports);
  2. a preemptible LeNet job (long) runs; once under way, the same urgent job is
     submitted: submit to its first step, through the stop request, the victim's snapshot
     at its next step, its requeue, and the urgent job's start;
  3. steps lost: the step the victim stopped at (its log) minus the step of the snapshot
     it resumes from. Goal: 0.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import time

from bench.harness import isolated_django, start_worker, stop_workers, wait

os.environ.update(DIGITS_CPU_DEVICES="1", DIGITS_DEVICE_HEARTBEAT_SECONDS="1", LOG_LEVEL="WARNING")
WORK = isolated_django("digits-bench-preempt-")

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402

from bench.dataset_build import make_folder  # noqa: E402
from datasets.services import dataset_create  # noqa: E402
from models_app.models import Metric, Snapshot, TrainedModel  # noqa: E402
from models_app.services import model_create  # noqa: E402
from workers.models import Job, JobEvent, JobStatus, Priority  # noqa: E402
from workers.services import Placement, job_abort  # noqa: E402


def first_step_after(job_id: int, submitted: float) -> float:
    """Seconds from `submitted` (time.time()) to the job's first training step."""
    job = wait(job_id, timeout=600, poll=0.2)
    startup = TrainedModel.objects.get(pk=job_id).timings.get("startup_seconds", 0.0)
    return job.started_at.timestamp() + float(startup) - submitted


def until(condition, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("timed out; see the worker log in " + str(WORK))
        time.sleep(0.05)


def round_trip(owner, admin, dataset, n: int) -> tuple[float, float, int]:
    urgent = Placement(priority=Priority.URGENT)
    submitted = time.time()
    idle = first_step_after(model_create(owner=admin, name=f"idle-{n}", dataset=dataset, epochs=1, placement=urgent).pk, submitted)
    victim = model_create(owner=owner, name=f"victim-{n}", dataset=dataset, epochs=500, snapshot_interval=50,
                          val_interval=50, placement=Placement(preemptible=True))
    until(lambda: Metric.objects.filter(model_id=victim.pk, name="train_loss").count() >= 100)
    submitted = time.time()
    urgent_job = model_create(owner=admin, name=f"urgent-{n}", dataset=dataset, epochs=1, placement=urgent)
    until(lambda: JobEvent.objects.filter(job_id=victim.pk, message__startswith="Preempted").exists())
    resumes_from = Snapshot.objects.filter(model_id=victim.pk).order_by("-epoch").values_list("filename", flat=True).first()
    preempted = first_step_after(urgent_job.pk, submitted)
    log = Job.objects.get(pk=victim.pk).log_path.read_text()
    stopped_at = int(re.findall(r"stopping at iteration (\d+)", log)[-1])
    resumed_at = int(re.search(r"snapshot_iter_(\d+)", resumes_from or "").group(1))  # type: ignore[union-attr]
    job_abort(Job.objects.get(pk=victim.pk))
    until(lambda: Job.objects.get(pk=victim.pk).status in JobStatus.finished())
    return idle, preempted, stopped_at - resumed_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    import redis

    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    call_command("prepare")
    owner = get_user_model().objects.create_user("bench", password="bench-only")
    admin = get_user_model().objects.create_user("admin", password="bench-only", is_staff=True)
    worker = start_worker(WORK, "bench", ["-Q", "datasets", "-c", "1"], {"DIGITS_DEVICE": "cpu:0"})
    try:
        folder = make_folder(WORK / "images" / "shapes", 1200, (28, 28), "L", "png")
        dataset = dataset_create(owner=owner, name="shapes", folder=str(folder), image_width=28, image_height=28,
                                 image_mode="grayscale", val_percent=10)
        wait(dataset.pk)
        dataset.refresh_from_db()
        rounds = [round_trip(owner, admin, dataset, n) for n in range(args.runs)]
    finally:
        stop_workers([worker])
        if not args.keep:
            shutil.rmtree(WORK, ignore_errors=True)
    idle = [r[0] for r in rounds]
    preempt = [r[1] for r in rounds]
    lost = [r[2] for r in rounds]
    print(f"\n{args.runs} rounds, one CPU device, LeNet on 28x28 grayscale")
    print(f"urgent job, submit to first step on an idle device (baseline): median {statistics.median(idle):.2f} s "
          f"(min {min(idle):.2f}, max {max(idle):.2f})")
    print(f"urgent job, submit to first step through a preemption: median {statistics.median(preempt):.2f} s "
          f"(min {min(preempt):.2f}, max {max(preempt):.2f}) -> {statistics.median(preempt) / statistics.median(idle):.2f}x the baseline")
    print(f"steps the preempted job lost beyond its last snapshot: {lost} (goal: 0)")


if __name__ == "__main__":
    main()
