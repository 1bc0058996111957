"""What the system benchmarks share: an isolated Django setup (SQLite and data folders in a
fresh temporary folder, Redis db 12) made before anything imports the models, and waiting
for a job. Import it first and call `isolated_django()` before importing app modules."""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def isolated_django(prefix: str) -> Path:
    """Point the settings at a new work folder and set Django up; returns the folder."""
    sys.path.insert(0, str(ROOT))
    work = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.update(
        DJANGO_SETTINGS_MODULE="digits_site.settings",
        DIGITS_DATA_DIR=str(work / "data"),
        DIGITS_DATA_ROOTS=str(work / "images"),
        REDIS_URL=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12"),
        CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    )
    os.environ.pop("DATABASE_URL", None)
    import django

    django.setup()
    return work


def wait(job_id: int, timeout: float = 3600, poll: float = 1.0) -> Any:
    """The job once it finished; exits the benchmark if it failed or took too long. Polls
    slowly: the harness itself should not compete with the training threads."""
    from workers.models import Job, JobStatus

    deadline = time.monotonic() + timeout
    while True:
        job = Job.objects.get(pk=job_id)
        if job.status in JobStatus.finished():
            if job.status != JobStatus.DONE:
                raise SystemExit(f"job {job_id} ended {job.status}: {job.error}\n{job.log_tail(20)}")
            return job
        if time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} timed out")
        time.sleep(poll)


def start_worker(work: Path, name: str, args: list[str], env: dict[str, str]) -> Any:
    """A Celery worker of this setup, in its own session, logging to `work/<name>.log`."""
    import subprocess

    log = (work / f"{name}.log").open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "digits_site", "worker", "--loglevel", "WARNING", "-n", f"{name}@%h",
         "--without-mingle", "--without-gossip", *args],
        cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def stop_workers(procs: list[Any]) -> None:
    """Each worker's whole process group: TERM, then KILL after 30 s."""
    import subprocess

    for proc in procs:
        try:
            os.killpg(proc.pid, 15)
            proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, 9)
