"""Run a job's work in a child process and relay its JSON-lines output.

The Celery task (thin) calls `job_run` (a device-less kind) or `ranks.rank_run` (one rank
of a device kind); both start the kind's child module with `run_child`. The child prints
one JSON object per line on stdout; everything else it prints, and all of stderr, goes to
the job log. This process:
  - batches events and hands them to the kind's `apply` (which stores them and publishes
    them live after commit),
  - watches the job row and kills the child's whole process group within about a second
    of an abort or delete,
  - turns a non-zero exit into a job error with the child's own message or the log tail.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.db import close_old_connections, transaction
from django.utils import timezone

from . import kinds, protocol, storage, zygote
from .models import Job, JobStatus, StopReason
from .outage import UNREACHABLE, forget_connection, until_database
from .procs import child_setup, end_group, process_gone, signal_group
from .services import job_interrupt
from .transitions import JobError, job_claim, job_fail, job_request_stop, job_set_progress, job_transition

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
COALESCE_SECONDS = 0.05
KILL_GRACE_SECONDS = 5.0

Event = protocol.Event


@dataclass
class ChildResult:
    returncode: int
    stopped: bool  # killed because the job was aborted or deleted
    error: str = ""  # the child's own error message, if it reported one
    peer_lost: bool = False  # a distributed rank lost contact with the others
    bad_events: int = 0  # JSON lines that were not valid events (logged, then ignored)
    # A graceful stop (workers/models.py StopReason): the one asked of this run, whether
    # the child stopped early for it (its Stopped event), or was killed after the grace.
    stop_reason: str = ""
    stopped_early: bool = False
    stop_killed: bool = False
    finished: bool = False  # the child said it had finished its work (protocol.Finished)


def write_spec(job: Job, spec: dict[str, Any], name: str = "spec.json") -> Path:
    job.directory.mkdir(parents=True, exist_ok=True)
    path = job.directory / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(spec, indent=2))
    os.replace(tmp, path)
    return path


def _reader(stream: IO[bytes], out: queue.Queue, logfile: IO[str], ended: threading.Event, counts: ChildResult) -> None:
    """Events go to `out`; other output goes to the job log; a JSON line that is not a
    valid event is logged, counted and otherwise ignored: a child's bug must not stop the
    relay of its good events."""
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        if line.startswith("{"):
            try:
                event = protocol.decode(line)
            except protocol.ProtocolError as exc:
                counts.bad_events += 1
                log.warning("ignored a malformed event from a job's child (%s): %.200s", exc, line)
                line = f"[ignored a malformed event: {exc}] {line[:500]}"
            else:
                if isinstance(event, protocol.Log):
                    line = event.message
                else:
                    out.put(event)
                    continue
        logfile.write(line + "\n")
        logfile.flush()
    out.put(None)
    ended.set()


def _still_wanted(job: Job, *, lock: bool = False) -> tuple[bool, str, datetime | None]:
    """Is this run (the one that claimed the job at job.started_at) still the job's run?
    An abort, a delete, or an abort followed by a resume that another worker has
    already claimed all say no. With lock=True the job row stays locked until the
    caller's transaction ends, so an abort cannot slip in between check and write.
    Also: the graceful stop asked of it, if any, and since when."""
    rows = Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING, started_at=job.started_at)
    if lock:
        rows = rows.select_for_update()
    row = rows.values_list("stop_request", "stop_requested_at").first()
    if row is None:
        return False, "", None
    return True, row[0], row[1]


def _store(
    job: Job, batch: list[Event], handle: Callable[[list[Event]], None], finished: bool, time_limit: float | None
) -> tuple[bool, str, datetime | None]:
    """Store a batch of events (only while this run still owns the job: after an abort,
    and a quick resume, late points must not reach the charts), and say whether the run
    is still wanted, and the stop asked of it, if any (its time limit asks here)."""
    close_old_connections()
    stop, stop_at = "", None
    if batch:
        with transaction.atomic():
            wanted, stop, stop_at = _still_wanted(job, lock=True)
            if wanted:
                handle(batch)
    elif finished:
        wanted = True
    else:
        wanted, stop, stop_at = _still_wanted(job)
    if wanted and not finished and not stop and time_limit and job.started_at:
        if timezone.now() >= job.started_at + timedelta(seconds=time_limit):
            try:
                job_request_stop(job, StopReason.TIMEOUT)
            except UNREACHABLE:  # the batch is stored: ask again at the next wake-up
                forget_connection()
            else:
                stop, stop_at = StopReason.TIMEOUT, timezone.now()
    return wanted, stop, stop_at


def _ask_to_stop(proc: subprocess.Popen[bytes] | zygote.ZygoteChild) -> None:
    """The graceful stop signal, to the child itself only: its DataLoader workers (same
    process group) would die of SIGUSR1's default action."""
    try:
        os.kill(proc.pid, getattr(signal, protocol.STOP_SIGNAL))
    except ProcessLookupError:
        pass


def _kill_group(proc: subprocess.Popen[bytes] | zygote.ZygoteChild) -> None:
    if signal_group(proc, signal.SIGTERM):
        end_group(proc, KILL_GRACE_SECONDS)


def run_child(
    job: Job,
    module: str,
    spec: dict[str, Any],
    handle: Callable[[list[Event]], None],
    *,
    env: dict[str, str] | None = None,
    name: str = "",
    zygote_socket: Path | None = None,
    time_limit: float | None = None,
) -> ChildResult:
    """Run `module` on `spec`; `name` tells ranks apart ("rank1": spec-rank1.json and
    job-rank1.log; rank 0 and single-process jobs use spec.json and job.log). With a
    `zygote_socket` the child is forked from that pre-imported zygote (workers/zygote.py)
    when it answers, and started directly otherwise.

    A graceful stop (a preemption asked by the scheduler, or `time_limit` seconds since
    the run started, which this run itself asks for) is passed to the child as SIGUSR1,
    at each wake-up until it ends; a child that has not ended STOP_GRACE_SECONDS after
    the request is killed."""
    spec_path = write_spec(job, spec, f"spec-{name}.json" if name else "spec.json")
    log_path = job.directory / f"job-{name}.log" if name else job.log_path
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log_path.open("a", buffering=1) as logfile:
        logfile.write(f"$ {sys.executable} -m {module} --spec {spec_path}\n")
        proc = _start(module, ["--spec", str(spec_path)], child_env, logfile, zygote_socket)
        events: queue.Queue = queue.Queue()
        ended = threading.Event()
        result = ChildResult(returncode=0, stopped=False)
        thread = threading.Thread(target=_reader, args=(proc.stdout, events, logfile, ended, result), daemon=True)
        thread.start()
        finished = False
        # Events not stored yet (the database is unreachable), and since when it is.
        pending: list[Event] = []
        down_since: float | None = None
        next_try = 0.0
        try:
            while not finished or pending:
                # Wake at the first event (or the child's end, or after POLL_SECONDS to see
                # whether the job is still wanted), then give the rest of its burst
                # COALESCE_SECONDS to arrive: points reach the page within a fraction of a
                # second, and the database gets a few writes a second, not one per line.
                items: list[Event | None] = []
                try:
                    items.append(events.get(timeout=POLL_SECONDS))
                    if items[0] is not None:
                        ended.wait(COALESCE_SECONDS)
                except queue.Empty:
                    pass
                while True:
                    try:
                        items.append(events.get_nowait())
                    except queue.Empty:
                        break
                fresh: list[Event] = []
                for item in items:
                    if item is None:
                        finished = True
                        break
                    fresh.append(item)
                for event in fresh:
                    if isinstance(event, protocol.Error):
                        result.error = event.message
                        result.peer_lost = event.peer_lost
                    elif isinstance(event, protocol.Stopped):
                        result.stopped_early = True
                    elif isinstance(event, protocol.Finished):
                        result.finished = True
                batch, pending = pending + fresh, []
                if down_since is not None and time.monotonic() < next_try:
                    pending = batch  # not every wake-up: once a second is enough to notice it is back
                    continue
                try:
                    wanted, stop, stop_at = _store(job, batch, handle, finished, time_limit)
                except UNREACHABLE as exc:
                    # The database is gone for now (restarting, cut off): the child trains
                    # on and its events wait here, in order, until they can be stored.
                    forget_connection()
                    now = time.monotonic()
                    if down_since is None:
                        down_since = now
                        log.warning("job %s: database unreachable (%s); keeping its events until it is back", job.pk, str(exc).strip())
                    if now - down_since > settings.DB_OUTAGE_SECONDS:
                        raise
                    pending, next_try = batch, now + 1.0
                    continue
                if down_since is not None:
                    log.warning("job %s: database back after %.0f s; %d events stored", job.pk, time.monotonic() - down_since, len(batch))
                    down_since = None
                if wanted and stop and not finished:
                    result.stop_reason = stop
                    _ask_to_stop(proc)  # again at each wake-up: one sent before its handler was set is lost
                    if stop_at is not None and timezone.now() >= stop_at + timedelta(seconds=settings.STOP_GRACE_SECONDS):
                        log.warning("job %s did not stop within %.0f s of the request: killing it", job.pk, settings.STOP_GRACE_SECONDS)
                        result.stop_killed = True
                        _kill_group(proc)
                        break
                if not wanted:
                    log.info("job %s no longer running: stopping child %s", job.pk, proc.pid)
                    result.stopped = True
                    if not finished:
                        _kill_group(proc)
                    break
        except BaseException:
            _kill_group(proc)
            raise
        result.returncode = proc.wait()
        thread.join(timeout=5)
    return result


def _start(
    module: str, args: list[str], env: dict[str, str], logfile: IO[str], zygote_socket: Path | None
) -> subprocess.Popen[bytes] | zygote.ZygoteChild:
    """The child process: forked from the zygote when one answers, else a fresh Python.
    Either way it runs in its own process group (an abort ends its DataLoader workers
    too) and dies with this process (a killed worker leaves no orphan on its device)."""
    if zygote_socket is not None and settings.ZYGOTE:
        try:
            return zygote.start(zygote_socket, module, args, env, str(settings.BASE_DIR), logfile.fileno())
        except zygote.ZygoteUnavailable as exc:
            log.info("no zygote at %s (%s): starting the child directly", zygote_socket, exc)
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=logfile,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=child_setup,
    )


def last_progress(batch: list[Event]) -> protocol.Progress | None:
    """Progress reports are cumulative: only the newest in a batch needs storing."""
    return next((e for e in reversed(batch) if isinstance(e, protocol.Progress)), None)


def relay_progress(job_id: int, batch: list[Event]) -> None:
    progress = last_progress(batch)
    if progress is not None:
        job_set_progress(job_id, float(progress.progress), progress.eta)


def _take_over(job_id: int) -> bool:
    """A redelivered task found its job running. If the process that ran it on this host
    is gone (killed: Celery requeued the message because its pool process died), requeue
    the job so this task can run it again; a live run is left alone."""
    job = Job.objects.filter(pk=job_id, status=JobStatus.RUNNING).first()
    if job is None or job.runner_host != settings.HOST_NAME or not process_gone(job.runner_pid, job.started_at):
        return False
    return job_interrupt(job_id, None, f"the worker process running it (pid {job.runner_pid}) was killed")


def recover_lost_runs() -> int:
    """At a worker's start: device-less jobs still "running" on this host whose process is
    gone (the whole worker was killed, so Celery will not redeliver their messages for a
    long time) are requeued to run again. Returns how many."""
    lost = 0
    device_less = [k.name for k in kinds.all_kinds() if not k.uses_devices]
    running = Job.objects.filter(kind__in=device_less, status=JobStatus.RUNNING, runner_host=settings.HOST_NAME)
    for job in running.only("pk", "runner_pid", "started_at"):
        if process_gone(job.runner_pid, job.started_at):
            lost += job_interrupt(job.pk, None, f"the worker process running it (pid {job.runner_pid}) is gone")
    return lost


def job_run(job_id: int) -> ChildResult | None:
    """Run a queued job of a device-less kind (a dataset build) and record its outcome.

    Returns None when it did not run: deleted before it started, aborted, or a redelivered
    message for a job that already ran or is running."""
    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        log.info("job %s no longer exists (deleted before it started); nothing to run", job_id)
        return None
    kind = kinds.get(job.kind)
    claim = {"also": {"runner_host": settings.HOST_NAME, "runner_pid": os.getpid()}}
    if not job_claim(job_id, **claim) and not (_take_over(job_id) and job_claim(job_id, **claim)):
        log.info("job %s was not queued any more; skipping", job_id)
        return None
    job = Job.objects.get(pk=job_id)

    def relay(batch: list[Event]) -> None:
        relay_progress(job_id, batch)
        kind.apply(job_id, batch)

    try:
        with storage.pinned(fetch_inputs(kind, job)):
            result = run_child(job, kind.child_module(), kind.spec(job), relay, env=kind.env(job))
    except JobError as exc:  # the spec could not be made (an input vanished): say so
        job_fail(job_id, str(exc))
        kind.cleanup(job)
        return None
    except Exception as exc:
        log.exception("job %s failed in the worker", job_id)
        job_fail(job_id, f"The worker failed while running this job: {exc}")
        kind.cleanup(job)
        raise
    # The run has ended: its outcome is recorded even if the database is away right now.
    return until_database(f"finishing job {job_id}", lambda: _finish_run(job, result))


def _finish_run(job: Job, result: ChildResult) -> ChildResult:
    """Record how a device-less job's run ended (safe to run again: the writes are
    conditional)."""
    job_id, kind = job.pk, kinds.get(job.kind)
    if not Job.objects.filter(pk=job_id).exists():
        # Deleted while running: the child may have written files after the delete.
        shutil.rmtree(job.directory, ignore_errors=True)
        return result
    if not result.stopped and result.returncode == 0:
        try:
            publish_outputs(kind, job)  # first: "done" means readable from every host
            message = kinds.complete(kind, job)
        except JobError as exc:
            job_fail(job_id, str(exc))
        else:
            if job_transition(job_id, JobStatus.DONE, from_=[JobStatus.RUNNING], message=message):
                return result
    elif not result.stopped:
        job_fail(job_id, failure_message(job, result))
        publish_log(job)
    kind.cleanup(job)
    return result


def fetch_inputs(kind: kinds.Kind, job: Job) -> list[Path]:
    """What the child reads, from the artifact store when this host has not got it; the
    folders to pin while it runs (its inputs and its own). Nothing without a store."""
    if not storage.enabled():
        return []
    inputs = kind.inputs(job)
    for path in inputs:
        storage.fetch(path)  # a StorageError says what could not be fetched
    return [*inputs, job.directory]


def publish_outputs(kind: kinds.Kind, job: Job) -> None:
    """What the job made (its log too), to the artifact store, before the job is marked
    done: "done" means every host can read it. A store that fails here fails the job
    (its files stay on this host) with the store's own words."""
    if not storage.enabled():
        return
    try:
        for path in kind.artifacts(job):
            storage.publish(path)
    except UNREACHABLE:
        raise  # the database, not the store: waited for by the caller
    except Exception as exc:  # noqa: BLE001 - said on the job
        log.exception("job %s: publishing its artifacts failed; they stay on %s", job.pk, settings.HOST_NAME)
        raise JobError(f"The job finished, but its results could not be stored in the artifact store "
                       f"({type(exc).__name__}: {exc}); they are on {settings.HOST_NAME}. Check the store and resume it.") from exc


def publish_log(job: Job) -> None:
    """A failed run's log, to the artifact store: why it failed, readable from any host."""
    try:
        if job.log_path.exists():
            storage.publish(job.log_path)
    except Exception:  # noqa: BLE001 - logged; the log stays on this host
        log.exception("job %s: publishing its log failed", job.pk)


def failure_message(job: Job, result: ChildResult) -> str:
    """What the job page says when the child failed: its own message, or the log tail."""
    if result.error:
        return result.error
    if result.returncode == -signal.SIGKILL:
        return (
            "The job's process was killed (signal 9), most often because the machine ran out of memory. "
            f"Try a smaller batch size. Last lines of its log:\n{job.log_tail(15)}"
        )
    return f"The job's process exited with code {result.returncode}. Last lines of its log:\n{job.log_tail(15)}"
