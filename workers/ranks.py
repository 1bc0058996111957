"""The worker side of a placed job: each rank claims its allocation, rank 0 claims the job
and publishes where it listens, the others wait for that, and every rank releases its
device when its child ends. Used by models_app.services.model_rank_run.

A redelivered or stale message does nothing: the allocation is claimed atomically once,
and a rank of an older attempt (the job was interrupted and placed again) is skipped.
"""
from __future__ import annotations

import logging
import socket
import time

from django.conf import settings
from django.utils import timezone

from .models import Allocation, AllocationOutcome, Job, JobStatus
from .services import job_claim

log = logging.getLogger(__name__)


def claim_allocation(allocation_id: int) -> Allocation | None:
    """Start this rank once: None for a redelivered message, a released allocation (the
    job was aborted or interrupted meanwhile) or one that no longer exists."""
    claimed = Allocation.objects.filter(pk=allocation_id, started_at__isnull=True, released_at__isnull=True).update(
        started_at=timezone.now()
    )
    if not claimed:
        log.info("allocation %s was already started or released; ignoring this message", allocation_id)
        return None
    return Allocation.objects.select_related("device", "job").get(pk=allocation_id)


def release(allocation: Allocation, outcome: AllocationOutcome) -> None:
    Allocation.objects.filter(pk=allocation.pk, released_at__isnull=True).update(
        released_at=timezone.now(), outcome=outcome
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def join(allocation: Allocation) -> Job | None:
    """Rank 0 moves the job to RUNNING (with where it listens); other ranks wait for that.
    None: this attempt is no longer the job's (aborted, interrupted, deleted)."""
    job = allocation.job
    if job is None:
        return None
    if allocation.rank == 0:
        labels = list(
            Allocation.objects.filter(job=job, attempt=allocation.attempt).order_by("rank").values_list(
                "device__host", "device__kind", "device__index"
            )
        )
        where = ", ".join(f"{h}/{k}{i}" for h, k, i in labels)
        rendezvous = f"{allocation.device.address}:{_free_port()}"
        message = f"On {where}." + (f" {len(labels)} ranks meet at {rendezvous}." if len(labels) > 1 else "")
        if not job_claim(job.pk, where={"attempt": allocation.attempt}, also={"rendezvous": rendezvous}, message=message):
            return None
        return Job.objects.get(pk=job.pk)
    deadline = time.monotonic() + settings.RENDEZVOUS_SECONDS
    while time.monotonic() < deadline:
        job = Job.objects.filter(pk=allocation.job_id).first()
        if job is None or job.attempt != allocation.attempt or job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
            return None
        if job.status == JobStatus.RUNNING and job.rendezvous:
            return job
        time.sleep(0.1)
    from .devices import interrupt

    interrupt(allocation, f"Rank 0 did not start within {settings.RENDEZVOUS_SECONDS:.0f} s")
    return None


def rank_env(allocation: Allocation, job: Job) -> dict[str, str]:
    """torch.distributed's environment for this rank (one device per process, so the local
    rank is always 0), and the thread count of a CPU device."""
    host, _, port = job.rendezvous.rpartition(":")
    env = {
        "RANK": str(allocation.rank),
        "WORLD_SIZE": str(allocation.world_size),
        "LOCAL_RANK": "0",
        "MASTER_ADDR": host or "127.0.0.1",
        "MASTER_PORT": port,
        "DIGITS_DIST_TIMEOUT": str(int(settings.RENDEZVOUS_SECONDS)),
    }
    if allocation.device.kind == "cpu":
        threads = str(settings.CPU_DEVICE_THREADS)
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    return env
