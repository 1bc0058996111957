"""The worker side of a placed job: each rank claims its allocation, rank 0 claims the job
and publishes where it listens, the others wait for that, every rank runs its kind's
child, and every rank releases its device when its child ends (`rank_run`, called by the
Celery task on the device's own worker).

A redelivered or stale message does nothing: the allocation is claimed atomically once,
and a rank of an older attempt (the job was interrupted and placed again) is skipped. A
redelivered message whose rank's process was killed (Celery requeues the message of a pool
process that died) requeues the job to resume from its last snapshot.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from . import kinds, storage, zygote
from .models import Allocation, AllocationOutcome, Job, JobStatus, StopReason
from .outage import UNREACHABLE, until_database
from .procs import process_gone
from .runner import ChildResult, Event, failure_message, fetch_inputs, publish_log, publish_outputs, relay_progress, run_child
from .scheduler import schedule, schedule_on_commit
from .services import allocation_interrupt
from .transitions import JobError, job_claim, job_transition

log = logging.getLogger(__name__)


def claim_allocation(allocation_id: int) -> Allocation | None:
    """Start this rank once: None for a redelivered message, a released allocation (the
    job was aborted or interrupted meanwhile) or one that no longer exists."""
    claimed = Allocation.objects.filter(pk=allocation_id, started_at__isnull=True, released_at__isnull=True).update(
        started_at=timezone.now(), pid=os.getpid()
    )
    if not claimed:
        lost_rank_check(allocation_id)
        log.info("allocation %s was already started or released; ignoring this message", allocation_id)
        return None
    return Allocation.objects.select_related("device", "job").get(pk=allocation_id)


def lost_rank_check(allocation_id: int) -> bool:
    """An allocation still active whose process on this host is gone was killed mid-run:
    interrupt it, so its job resumes from its last snapshot instead of staying "running"
    with its device busy for good. Called for a redelivered message and by the heartbeat."""
    allocation = Allocation.objects.filter(
        pk=allocation_id, released_at__isnull=True, started_at__isnull=False, device__host=settings.HOST_NAME
    ).select_related("device").first()
    if allocation is None or not process_gone(allocation.pid, allocation.started_at):
        return False
    allocation_interrupt(
        allocation, f"the worker process running rank {allocation.rank} on {allocation.device.label} was killed"
    )
    return True


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
    job_id = job.pk
    while time.monotonic() < deadline:
        current = Job.objects.filter(pk=job_id).first()
        if current is None or current.attempt != allocation.attempt or current.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
            return None
        if current.status == JobStatus.RUNNING and current.rendezvous:
            return current
        time.sleep(0.1)
    allocation_interrupt(allocation, f"Rank 0 did not start within {settings.RENDEZVOUS_SECONDS:.0f} s", backoff=True)
    return None


def _after_stop(allocation: Allocation, job: Job, result: ChildResult, reporter: bool) -> AllocationOutcome:
    """The run stopped as asked (at its time limit, or preempted): it snapshotted at the
    step where it stopped (or, killed after the grace period, has its last snapshot).
    Rank 0 waits for the other ranks to give their devices back, then a timed-out job
    becomes "timed out" (resumable), a preempted one is requeued at its place to resume
    by itself; the other ranks only end."""
    # Why, from the job's row: another rank's runner may have seen the request first (the
    # ranks agree to stop together), and a preemption may have won over a time limit.
    asked, note = Job.objects.filter(pk=job.pk).values_list("stop_request", "stop_note").first() or ("", "")
    preempted = (asked or result.stop_reason) == StopReason.PREEMPT
    outcome = AllocationOutcome.PREEMPTED if preempted else AllocationOutcome.TIMED_OUT
    if not reporter:
        return outcome
    kind = kinds.get(job.kind)
    _wait_for_peers(allocation)
    release(allocation, outcome)
    attempt = {"attempt": allocation.attempt}
    how = (
        f"it did not stop within {settings.STOP_GRACE_SECONDS:.0f} s and was killed"
        if result.stop_killed else "it stopped at a snapshot of its last step"
    )
    if preempted:
        with transaction.atomic():  # as job_interrupt: the rewind and the requeue of this attempt, or neither
            if Job.objects.select_for_update().filter(pk=job.pk, status=JobStatus.RUNNING, **attempt).exists():
                then = kind.rewind(job.pk)
                if job_transition(
                    job.pk, JobStatus.QUEUED, from_=[JobStatus.RUNNING], where=attempt,
                    also={"runner_pid": None, "runner_host": ""},
                    message=f"Preempted {note}: {how}. {then}".replace("  ", " "),
                ):
                    schedule_on_commit()
    else:
        limit = duration_words(job.time_limit_seconds or 0.0)
        job_transition(
            job.pk, JobStatus.TIMED_OUT, from_=[JobStatus.RUNNING], where=attempt,
            message=f"Stopped at its time limit of {limit}: {how}. Resume it to go on from there.",
        )
    return outcome


def duration_words(seconds: float) -> str:
    """2 h 05 min, 12 min, 40 s."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min" if minutes else f"{secs} s"


def _zygote_socket(allocation: Allocation) -> Path | None:
    try:
        return zygote.socket_path(allocation.device.uuid, str(settings.DATA_DIR))
    except zygote.ZygoteUnavailable as exc:
        log.warning("%s", exc)
        return None


def _wait_for_peers(allocation: Allocation) -> None:
    """Until the other ranks of this attempt have released their devices (bounded: a rank
    still running after that is stopped by the job's end, as after an abort)."""
    peers = Allocation.objects.filter(job=allocation.job, attempt=allocation.attempt, released_at__isnull=True)
    peers = peers.exclude(pk=allocation.pk)
    deadline = time.monotonic() + settings.RENDEZVOUS_SECONDS
    while peers.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


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
    if allocation.world_size > 1 and (interface := interface_of(settings.HOST_ADDRESS)):
        # Gloo and NCCL pick the interface of the host name's address, which on a host
        # with several networks (or a name that resolves to 127.0.1.1) is not the one
        # the other hosts reach: use the interface of the address this host announced.
        for name in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
            if not os.environ.get(name):
                env[name] = interface
    return env


def interface_of(address: str) -> str | None:
    """The network interface that holds `address` on this host (None: loopback or none)."""
    if address.startswith("127.") or address in ("", "::1", "localhost"):
        return None
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == address for a in addresses):
            return name
    return None


def rank_run(allocation_id: int) -> None:
    """Run one rank of a placed job. Rank 0 hands the events to the kind and finishes the
    job; any rank's failure ends the job for all (the others see it and stop), or, when a
    rank lost its peers, requeues it to resume from the last snapshot."""
    allocation = claim_allocation(allocation_id)
    if allocation is None:
        return
    outcome = AllocationOutcome.SKIPPED
    try:
        job = join(allocation)
        if job is None:
            return
        try:
            outcome = _run_rank(allocation, job)
        except Exception as exc:
            # Whatever failed in this worker (a bad event, the database, starting the
            # child): the job fails with the reason instead of staying "running".
            log.exception("rank %s of job %s failed in the worker", allocation.rank, job.pk)
            outcome = AllocationOutcome.ERROR
            job_transition(
                job.pk, JobStatus.ERROR, from_=JobStatus.active(), where={"attempt": allocation.attempt},
                message=f"The worker failed while running this job: {type(exc).__name__}: {exc}",
            )
            raise
        except BaseException:
            # This process is being stopped under the rank (terminated: SystemExit), and its
            # child with it: the job resumes from its last snapshot, as when it is killed
            # (then the redelivered message or the heartbeat sees it; here nothing would).
            # A job that has ended meanwhile (aborted, done) stays as it is.
            outcome = AllocationOutcome.LOST
            until_database(f"requeuing job {job.pk}", lambda: allocation_interrupt(
                allocation, f"the worker process running rank {allocation.rank} on {allocation.device.label} was stopped",
            ))
            raise
    finally:
        until_database(f"giving back {allocation.device.label}", lambda: release(allocation, outcome))
        try:
            schedule()  # its device is free: the next job may start
        except UNREACHABLE:
            log.warning("no scheduling pass after job %s: the database is unreachable (the heartbeat's pass will run)", allocation.job_id)


def _run_rank(allocation: Allocation, job: Job) -> AllocationOutcome:
    kind = kinds.get(job.kind)
    reporter = allocation.rank == 0

    def relay(batch: list[Event]) -> None:
        if reporter:  # rank 0 reports for all; the others only run
            relay_progress(job.pk, batch)
            kind.apply(job.pk, batch)

    attempt = {"attempt": allocation.attempt}
    try:
        pins = fetch_inputs(kind, job)
        spec = kind.spec(job)
    except JobError as exc:
        job_transition(job.pk, JobStatus.ERROR, from_=JobStatus.active(), where=attempt, message=str(exc))
        return AllocationOutcome.ERROR
    with storage.pinned(pins):
        result = _run_rank_child(allocation, job, kind, spec, relay, reporter)
    # The run has ended: its outcome is recorded even if the database is away right now.
    return until_database(f"finishing job {job.pk}", lambda: _finish_rank(allocation, job, result))


def _run_rank_child(
    allocation: Allocation, job: Job, kind: kinds.Kind, spec: dict[str, Any], relay: Callable[[list[Event]], None],
    reporter: bool,
) -> ChildResult:
    return run_child(
        job, kind.child_module(), spec, relay,
        env={**kind.env(job), **rank_env(allocation, job)}, name="" if reporter else f"rank{allocation.rank}",
        zygote_socket=_zygote_socket(allocation),
        time_limit=job.time_limit_seconds if reporter and kind.stoppable else None,
    )


def _finish_rank(allocation: Allocation, job: Job, result: ChildResult) -> AllocationOutcome:
    """Record how this rank's run ended (safe to run again: every write is conditional)."""
    kind = kinds.get(job.kind)
    reporter = allocation.rank == 0
    attempt = {"attempt": allocation.attempt}
    if result.stopped_early or result.stop_killed:
        return _after_stop(allocation, job, result, reporter)
    if result.stopped:
        # Stopped because the job moved on: rank 0 finished it (this rank was ending too),
        # it was aborted or deleted, requeued, or failed on another rank.
        status = Job.objects.filter(pk=job.pk).values_list("status", flat=True).first()
        outcomes: dict[str | None, AllocationOutcome] = {
            JobStatus.DONE: AllocationOutcome.DONE,
            JobStatus.QUEUED: AllocationOutcome.INTERRUPTED,
            JobStatus.ERROR: AllocationOutcome.ERROR,
        }
        return outcomes.get(status, AllocationOutcome.ABORTED)
    if result.returncode != 0 and result.finished and not result.error:
        # It had taken its last step and written its snapshots: a crash in teardown (gloo's
        # threads at exit: "terminate called without an active exception") loses nothing.
        log.warning("job %s rank %s exited with code %s after finishing; counted as done",
                    job.pk, allocation.rank, result.returncode)
        result = dataclasses.replace(result, returncode=0)
    if result.returncode == 0:
        if reporter:
            try:
                publish_outputs(kind, job)  # first: "done" means readable from every host
                message = kinds.complete(kind, job)
            except JobError as exc:
                job_transition(job.pk, JobStatus.ERROR, from_=JobStatus.active(), where=attempt, message=str(exc))
                return AllocationOutcome.ERROR
            # "Done" means every rank has ended and given its device back: wait for the
            # others (they finish the same last step), then release this rank first.
            _wait_for_peers(allocation)
            release(allocation, AllocationOutcome.DONE)
            job_transition(job.pk, JobStatus.DONE, from_=[JobStatus.RUNNING], where=attempt, message=message)
        return AllocationOutcome.DONE
    if result.peer_lost:
        # Most often a peer's worker died: give the reaper the time to notice, so the
        # requeued job is not placed on that device again; then requeue it ourselves (a
        # peer that hangs, with its worker alive, is never reaped).
        # The reaper's interruption releases every allocation of the attempt, this one too:
        # then there is nothing left to do, and this worker is free for the next attempt.
        deadline = time.monotonic() + settings.DEVICE_DEAD_SECONDS + 2 * settings.DEVICE_HEARTBEAT_SECONDS
        mine = Allocation.objects.filter(pk=allocation.pk, released_at__isnull=True)
        current = Job.objects.filter(pk=job.pk, attempt=allocation.attempt, status__in=JobStatus.active())
        while time.monotonic() < deadline and mine.exists() and current.exists():
            time.sleep(0.25)
        allocation_interrupt(
            allocation, f"Rank {allocation.rank} lost contact with the other ranks", outcome=AllocationOutcome.INTERRUPTED
        )
        return AllocationOutcome.INTERRUPTED
    prefix = f"Rank {allocation.rank} on {allocation.device.label}: " if allocation.world_size > 1 else ""
    job_transition(
        job.pk, JobStatus.ERROR, from_=JobStatus.active(), where=attempt, message=prefix + failure_message(job, result),
    )
    if reporter:
        publish_log(job)
    return AllocationOutcome.ERROR
