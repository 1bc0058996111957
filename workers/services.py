"""Job lifecycle services: create, queue, abort, interrupt, resume, edit and delete jobs
of any kind, and steer the GPU queue. Status changes themselves go through
`transitions.job_transition`; what a kind does on each is its own hook (kinds.py)."""
from __future__ import annotations

from datetime import timedelta

import logging
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass

from celery import current_app
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from . import kinds, storage
from .events import publish
from .models import Allocation, AllocationOutcome, Device, DeviceLimit, Job, JobEvent, JobStatus, Priority, TeamLimit, Visibility
from .permissions import can_modify, visible_q
from .scheduler import queued_jobs, schedule_on_commit, user_limit
from .transitions import JobError, job_transition

log = logging.getLogger(__name__)

# Celery task names (workers/tasks.py), sent by name so this layer needs no import of it.
RUN_TASK = "workers.tasks.job_run_task"


def visibility_check(visibility: str) -> str:
    if visibility not in Visibility.values:
        raise JobError(f"Visibility is one of {', '.join(Visibility.values)}.", field="visibility")
    return visibility


def job_create(
    *, kind: str, name: str, owner: User, group: str = "", notes: str = "", placement: Placement | None = None,
    visibility: str = Visibility.TEAM,
) -> Job:
    kinds.get(kind)  # an unknown kind is a programming error: fail before writing anything
    fields: dict[str, object] = {"visibility": visibility_check(visibility)}
    if placement is not None:
        fields |= {
            "devices_requested": placement.devices, "priority": placement.priority, "multi_host": placement.multi_host,
            "time_limit_seconds": placement.time_limit_seconds, "preemptible": placement.preemptible,
        }
    job = Job.objects.create(kind=kind, name=name, owner=owner, group=group.strip(), notes=notes, **fields)
    if placement is not None and placement.device_ids:
        job.requested_devices.set(placement.device_ids)
    JobEvent.objects.create(job=job, status=JobStatus.INITIALIZED)
    job.directory.mkdir(parents=True, exist_ok=True)
    return job


@dataclass(frozen=True)
class Placement:
    """Where a training job may run: `devices` of any free ones (on one host unless
    `multi_host`), or exactly `device_ids`; its queue priority, its time limit, and
    whether a higher-priority job may preempt it."""

    devices: int = 1
    device_ids: tuple[int, ...] = ()
    priority: int = Priority.NORMAL
    multi_host: bool = False
    time_limit_seconds: float | None = None  # one run's wall time (None: no limit)
    preemptible: bool = False


def placement_check(
    user: User,
    *,
    devices: int | None = None,
    device_ids: Iterable[int] = (),
    priority: int | None = None,
    multi_host: bool = False,
    time_limit_hours: float | None = None,
    preemptible: bool = False,
) -> Placement:
    """Validate what a user asked for; JobError names the field to fix. (That the batch
    splits evenly over the devices is checked by model_create.)"""
    ids = tuple(dict.fromkeys(int(i) for i in device_ids))
    if priority is None:
        priority = Priority.NORMAL
    if priority not in Priority.values:
        raise JobError(f"Pick a priority among {', '.join(Priority.labels)}.", field="priority")
    if priority not in Priority.for_users() and not user.is_staff:
        raise JobError("Only admins may queue at high or urgent priority; pick normal or low.", field="priority")
    if ids:
        found = {d.pk: d for d in Device.objects.filter(pk__in=ids)}
        missing = [str(i) for i in ids if i not in found]
        if missing:
            raise JobError(f"No such device: {', '.join(missing)}.", field="device_ids")
        hosts = {d.host for d in found.values()}
        if len(hosts) > 1 and not multi_host:
            raise JobError(
                "These devices are on several hosts: tick 'allow several hosts', or pick devices of one host.",
                field="device_ids",
            )
        if devices and devices != len(ids):
            raise JobError(f"You picked {len(ids)} devices but asked for {devices}.", field="devices")
        devices = len(ids)
    devices = int(devices or 1)
    if devices < 1:
        raise JobError("Ask for at least one device.", field="devices")
    limit = user_limit(user.pk)
    if limit and devices > limit:
        raise JobError(f"You may use at most {limit} device{'s' if limit != 1 else ''} at once.", field="devices")
    if not ids:
        registered = list(Device.objects.filter(enabled=True).values_list("host", flat=True))
        most_on_one_host = max((registered.count(h) for h in set(registered)), default=0)
        available = len(registered) if multi_host else most_on_one_host
        if devices > max(available, 1):
            where = "" if multi_host else " on one host"
            hint = "" if multi_host or len(registered) < devices else ", or allow several hosts"
            raise JobError(
                f"Only {available} device{'s are' if available != 1 else ' is'} available{where}: ask for fewer{hint}.",
                field="devices",
            )
    return Placement(
        devices=devices, device_ids=ids, priority=int(priority), multi_host=bool(multi_host),
        time_limit_seconds=time_limit_check(user, time_limit_hours), preemptible=bool(preemptible),
    )


def time_limit_check(user: User, hours: float | None) -> float | None:
    """A run's time limit in seconds: what the user asked for, else their default (an
    admin's override, else DIGITS_JOB_TIME_LIMIT_HOURS); None: no limit. That default is
    also the most a non-admin may ask for."""
    override = DeviceLimit.objects.filter(user_id=user.pk).values_list("max_job_hours", flat=True).first()
    default = settings.JOB_TIME_LIMIT_HOURS if override is None else override
    if hours is None or hours == 0:
        if hours == 0 and default and not user.is_staff:
            raise JobError(f"Runs stop after at most {default:g} h here: ask for that or less.", field="time_limit_hours")
        return default * 3600.0 if default and hours is None else None
    if not 0 < hours <= 24 * 365:
        raise JobError("A time limit is a positive number of hours (up to a year), or empty for the default.", field="time_limit_hours")
    if default and hours > default and not user.is_staff:
        raise JobError(f"Runs stop after at most {default:g} h here: ask for that or less.", field="time_limit_hours")
    return hours * 3600.0


def job_enqueue(job_id: int, *, from_: Iterable[str], message: str = "") -> bool:
    """Queue a job at the back of its priority, with a fresh allowance of automatic
    requeues. A device kind waits for the scheduler; any other kind is sent to its queue."""
    job = Job.objects.only("kind").get(pk=job_id)
    kind = kinds.get(job.kind)
    queued = job_transition(
        job_id, JobStatus.QUEUED, from_=from_, message=message, also={"queue_position": time.time(), "interruptions": 0}
    )
    if queued:
        if kind.uses_devices:
            schedule_on_commit()
        else:
            transaction.on_commit(lambda: current_app.send_task(RUN_TASK, args=[job_id], queue=kind.queue))
    return queued


def job_resume(job: Job) -> str:
    """Continue an aborted, failed or timed-out job where its kind says it can (its last snapshot)."""
    kind = kinds.get(job.kind)
    if job.status not in JobStatus.resumable():
        raise JobError(
            f"Only an aborted, failed or timed-out {kind.label} can be resumed; this one is {job.get_status_display().lower()}."
        )
    with transaction.atomic():
        message = kind.prepare_resume(job)
        if not job_enqueue(job.pk, from_=JobStatus.resumable(), message=message):
            raise JobError("This job changed meanwhile; reload the page.")
    return message


def job_interrupt(job_id: int, attempt: int | None, reason: str, *, backoff: bool = False) -> bool:
    """The run of a job was lost (worker or process killed, host rebooted, peers gone):
    release every device of that attempt and requeue the job, keeping its place in the
    queue, to resume from its last checkpoint (the kind's `rewind` drops what was recorded
    after it, so charts continue without duplicates). `attempt` None: a device-less job.
    `backoff`: its ranks did not all start; it waits GANG_RETRY_SECONDS, doubled for each
    interruption so far, before it may be placed again. False: that run was already over."""
    with transaction.atomic():
        rows = Job.objects.select_for_update().filter(pk=job_id, status__in=[JobStatus.QUEUED, JobStatus.RUNNING])
        if attempt is not None:
            rows = rows.filter(attempt=attempt)
        job = rows.first()
        if job is None:
            return False
        kind = kinds.get(job.kind)
        Allocation.objects.filter(job_id=job_id, released_at__isnull=True).update(
            released_at=timezone.now(), outcome=AllocationOutcome.INTERRUPTED
        )
        if job.interruptions >= settings.MAX_INTERRUPTIONS:
            job_transition(
                job_id, JobStatus.ERROR, from_=JobStatus.active(),
                message=f"{reason}. It was interrupted {job.interruptions + 1} times, so it was not requeued again; "
                "check the workers, then resume it.",
            )
            transaction.on_commit(lambda: kind.cleanup(job))
            return True
        then = kind.rewind(job_id)
        also: dict[str, object] = {"interruptions": F("interruptions") + 1, "runner_pid": None, "runner_host": ""}
        if backoff:
            wait = min(settings.GANG_RETRY_SECONDS * 2**job.interruptions, 3600.0)
            also["not_before"] = timezone.now() + timedelta(seconds=wait)
            then += f" It is placed again in {wait:.0f} s at the earliest."
        requeued = job_transition(
            job_id, JobStatus.QUEUED, from_=[JobStatus.QUEUED, JobStatus.RUNNING],
            where={} if attempt is None else {"attempt": attempt}, also=also,
            message=f"Interrupted: {reason}. {then}",
        )
        if requeued and kind.uses_devices:
            schedule_on_commit()
        elif requeued:  # its own queue: send it again (a redelivered message finds it claimed)
            transaction.on_commit(lambda: current_app.send_task(RUN_TASK, args=[job_id], queue=kind.queue))
    return requeued


def allocation_interrupt(
    allocation: Allocation, reason: str, outcome: AllocationOutcome = AllocationOutcome.LOST, *, backoff: bool = False
) -> bool:
    """A rank was lost: release it, and requeue its job if this attempt is still the job's.

    Only the caller that releases the allocation requeues the job. Several detectors can
    see one loss (the heartbeat and a redelivered message for a killed process, the reaper
    and the surviving rank for a dead host); an allocation that is already released was
    either handed back by its run or released by the interruption that requeued its job,
    so requeuing again would count the loss twice. The job's row is locked first: ranks of
    one job lost together (their host stopping: each rank says so) or two reapers take
    turns, and the later ones find their allocation released by the first's interruption
    (released outside the lock, two of them could each count the loss)."""
    with transaction.atomic():
        if allocation.job_id is not None:
            Job.objects.select_for_update().filter(pk=allocation.job_id).first()
        released = Allocation.objects.filter(pk=allocation.pk, released_at__isnull=True).update(
            released_at=timezone.now(), outcome=outcome
        )
        if not released or allocation.job_id is None:
            return False
        return job_interrupt(allocation.job_id, allocation.attempt, reason, backoff=backoff)


def job_abort(job: Job) -> None:
    if not job.is_active:
        raise JobError(f"This job is already {job.get_status_display().lower()}; there is nothing to abort.")
    job_transition(job.pk, JobStatus.ABORTED, from_=JobStatus.active(), message="Aborted by the user.")


def job_update(
    job: Job, *, name: str | None = None, group: str | None = None, notes: str | None = None, visibility: str | None = None,
) -> Job:
    """Edit what a person may change at any time: the name, the group, the notes and who
    may see it."""
    if name is not None:
        if not name.strip():
            raise JobError("The name cannot be empty.", field="name")
        job.name = name.strip()[:200]
    if group is not None:
        job.group = group.strip()[:100]
    if notes is not None:
        job.notes = notes
    if visibility is not None:
        job.visibility = visibility_check(visibility)
    job.save(update_fields=["name", "group", "notes", "visibility"])
    publish(job.pk, {"type": "updated", "name": job.name, "group": job.group}, broadcast=True)
    return job


def job_delete(job: Job) -> None:
    """Delete a job's rows and files, and what depends on it (its kind's `before_delete`,
    which may refuse). A running job is aborted first so its process ends."""
    try:
        kinds.get(job.kind).before_delete(job)
    except kinds.UnknownKind:
        pass
    if job.is_active:
        job_transition(job.pk, JobStatus.ABORTED, from_=JobStatus.active(), message="Deleted by the user.")
    job_id = job.pk
    directory = job.directory
    with transaction.atomic():
        job.delete()
        publish(job_id, {"type": "deleted"}, broadcast=True)
    # Files go after the rows are gone, so a reader never sees a row without its files.
    shutil.rmtree(directory, ignore_errors=True)
    try:
        storage.forget(directory)
    except Exception:  # noqa: BLE001 - the rows are gone; left-over objects are only space
        log.exception("job %s: its objects in the artifact store could not be deleted", job_id)


BULK_ACTIONS = ("abort", "delete", "group")


def jobs_bulk(user: User, job_ids: Iterable[int], action: str, *, group: str = "") -> dict[str, list]:
    """One action on many jobs (the lists' bulk actions): abort, delete, or move to `group`.
    Each job is checked on its own (its owner or an admin; a state that allows it); the
    answer says which were done and why the others were skipped."""
    if action not in BULK_ACTIONS:
        raise JobError(f"Unknown action {action!r}; choose one of {', '.join(BULK_ACTIONS)}.", field="action")
    ids = list(dict.fromkeys(int(i) for i in job_ids))
    if not ids:
        raise JobError("Select at least one job.", field="ids")
    # Jobs the user may not see are "no such job", as everywhere else.
    jobs = {job.pk: job for job in Job.objects.filter(visible_q(user), pk__in=ids)}
    done: list[int] = []
    skipped: list[dict[str, object]] = []
    for job_id in ids:
        job = jobs.get(job_id)
        if job is None:
            skipped.append({"id": job_id, "reason": "no such job"})
        elif not can_modify(user, job):
            skipped.append({"id": job_id, "reason": "not yours: only its owner or an admin can change it"})
        else:
            try:
                if action == "abort":
                    job_abort(job)
                elif action == "delete":
                    job_delete(job)
                else:
                    job_update(job, group=group)
            except JobError as exc:
                skipped.append({"id": job_id, "reason": str(exc)})
            else:
                done.append(job_id)
    return {"done": done, "skipped": skipped}


# -- steering the GPU queue (admins: the cluster console and the API) --------------------


def queue_move(job: Job, where: str) -> None:
    """Move a queued job up, down, to the top or to the bottom of its owner's jobs of its
    priority. Between users, fair share decides (workers/fairshare.py); to put a job ahead
    of other users' jobs, raise its priority."""
    if job.status != JobStatus.QUEUED:
        raise JobError("Only a queued job can be moved.")
    same = list(queued_jobs().filter(priority=job.priority, owner_id=job.owner_id).values_list("pk", "queue_position"))
    index = next((i for i, (pk, _) in enumerate(same) if pk == job.pk), None)
    if index is None:
        raise JobError("This job is starting (its devices are allocated); it can no longer be moved.")
    positions = [p for _, p in same]
    if where == "top":
        new = positions[0] - 1.0
    elif where == "bottom":
        new = positions[-1] + 1.0
    elif where in ("up", "down"):
        other = index - 1 if where == "up" else index + 1
        if not 0 <= other < len(same):
            return
        with transaction.atomic():
            Job.objects.filter(pk=same[other][0]).update(queue_position=positions[index])
            Job.objects.filter(pk=job.pk).update(queue_position=positions[other])
        if positions[index] == positions[other]:  # equal positions: break the tie
            Job.objects.filter(pk=job.pk).update(queue_position=positions[other] + (-1e-3 if where == "up" else 1e-3))
        schedule_on_commit()
        return
    else:
        raise JobError("Move a job up, down, top or bottom.")
    Job.objects.filter(pk=job.pk).update(queue_position=new)
    schedule_on_commit()


def queue_set_priority(job: Job, priority: int) -> None:
    if priority not in Priority.values:
        raise JobError(f"Pick a priority among {', '.join(Priority.labels)}.")
    Job.objects.filter(pk=job.pk).update(priority=priority)
    schedule_on_commit()


def queue_hold(job: Job, held: bool) -> None:
    """Hold a queued job (it keeps its place, does not start) or release it."""
    if held and job.status != JobStatus.QUEUED:
        raise JobError("Only a queued job can be held.")
    Job.objects.filter(pk=job.pk).update(held=held)
    publish(job.pk, {"type": "queue", "held": held})
    schedule_on_commit()


def device_set_enabled(device: Device, enabled: bool) -> None:
    """Drain (its current job finishes, no new one starts) or enable a device."""
    Device.objects.filter(pk=device.pk).update(enabled=enabled)
    schedule_on_commit()


def user_limit_set(
    user: User, max_devices: int | None, max_device_hours_per_week: float | None = None, max_job_hours: float | None = None,
) -> None:
    """Set a user's limits, all three at once: devices held at once, device-hours in any 7
    days, and the time limit of one run (0: no limit; None: the site's default). All None:
    the defaults again."""
    if max_devices is not None and max_devices < 0:
        raise JobError("A device limit is 0 (no limit) or more devices.", field="max_devices")
    if max_device_hours_per_week is not None and not 0 <= max_device_hours_per_week < 1e9:
        raise JobError("A weekly quota is 0 (no limit) or more device-hours.", field="max_device_hours_per_week")
    if max_job_hours is not None and not 0 <= max_job_hours <= 24 * 365:
        raise JobError("A run's time limit is 0 (none) or up to a year of hours.", field="max_job_hours")
    if max_devices is None and max_device_hours_per_week is None and max_job_hours is None:
        DeviceLimit.objects.filter(user=user).delete()
    else:
        DeviceLimit.objects.update_or_create(user=user, defaults={
            "max_devices": max_devices, "max_device_hours_per_week": max_device_hours_per_week, "max_job_hours": max_job_hours,
        })
    schedule_on_commit()


def team_limit_set(team: Group, max_devices: int, max_device_hours_per_week: float) -> None:
    """Set a team's quota: devices its members' jobs hold at once, device-hours in any 7
    days (0: no limit; both 0: no quota)."""
    if max_devices < 0:
        raise JobError("A device limit is 0 (no limit) or more devices.", field="max_devices")
    if not 0 <= max_device_hours_per_week < 1e9:
        raise JobError("A weekly quota is 0 (no limit) or more device-hours.", field="max_device_hours_per_week")
    if not max_devices and not max_device_hours_per_week:
        TeamLimit.objects.filter(team=team).delete()
    else:
        TeamLimit.objects.update_or_create(
            team=team, defaults={"max_devices": max_devices, "max_device_hours_per_week": max_device_hours_per_week}
        )
    schedule_on_commit()
