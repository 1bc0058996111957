"""Job lifecycle services: every status change goes through `job_transition`."""
from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from .events import publish
from .models import Job, JobEvent, JobKind, JobStatus, Priority

log = logging.getLogger(__name__)


class JobError(Exception):
    """A user-facing problem with a job request; the message says what to do. `field`
    names the form field it belongs to, when there is one."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def job_create(
    *, kind: JobKind, name: str, owner, group: str = "", notes: str = "", placement: Placement | None = None  # noqa: ANN001
) -> Job:
    fields = {}
    if placement is not None:
        fields = {"devices_requested": placement.devices, "priority": placement.priority, "multi_host": placement.multi_host}
    job = Job.objects.create(kind=kind, name=name, owner=owner, group=group.strip(), notes=notes, **fields)
    if placement is not None and placement.device_ids:
        job.requested_devices.set(placement.device_ids)
    JobEvent.objects.create(job=job, status=JobStatus.INITIALIZED)
    job.directory.mkdir(parents=True, exist_ok=True)
    return job


@dataclass(frozen=True)
class Placement:
    """Where a training job may run: `devices` of any free ones (on one host unless
    `multi_host`), or exactly `device_ids`; and its queue priority."""

    devices: int = 1
    device_ids: tuple[int, ...] = ()
    priority: int = Priority.NORMAL
    multi_host: bool = False


def placement_check(
    user,  # noqa: ANN001
    *,
    devices: int | None = None,
    device_ids: Iterable[int] = (),
    priority: int | None = None,
    multi_host: bool = False,
) -> Placement:
    """Validate what a user asked for; JobError names the field to fix. (That the batch
    splits evenly over the devices is checked by model_create.)"""
    from .models import Device
    from .scheduler import user_limit

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
    return Placement(devices=devices, device_ids=ids, priority=int(priority), multi_host=bool(multi_host))


def job_transition(
    job_id: int,
    to: JobStatus,
    *,
    from_: Iterable[str] | None = None,
    message: str = "",
    where: dict[str, Any] | None = None,
    also: dict[str, Any] | None = None,
) -> bool:
    """Atomically move a job to `to` if it is currently in one of `from_`.

    Returns False when the job was not in an allowed state (e.g. a redelivered task whose
    job already runs, or an abort racing with completion) — callers treat that as "someone
    else got there first" and do nothing. `where` adds conditions (an attempt number),
    `also` more fields to set in the same update.
    """
    allowed = list(from_) if from_ is not None else [s for s in JobStatus.values if s != to]
    now = timezone.now()
    fields: dict[str, object] = {"status": to}
    if to == JobStatus.RUNNING:
        fields.update(started_at=now, finished_at=None, error="")
    if to in JobStatus.finished():
        fields["finished_at"] = now
        fields["eta_seconds"] = None
    if to == JobStatus.ERROR:
        fields["error"] = message
    if to == JobStatus.DONE:
        fields["progress"] = 1.0
    if to == JobStatus.QUEUED:
        fields.update(queued_at=now, dispatched_at=None, rendezvous="")
    fields.update(also or {})
    with transaction.atomic():
        updated = Job.objects.filter(pk=job_id, status__in=allowed, **(where or {})).update(**fields)
        if not updated:
            return False
        JobEvent.objects.create(job_id=job_id, status=to, message=message)
        publish(job_id, {"type": "status", "status": str(to), "message": message}, broadcast=True)
    return True


def job_claim(job_id: int, **kwargs: Any) -> bool:
    """Claim a queued job for running; a redelivered task that loses the claim must exit."""
    return job_transition(job_id, JobStatus.RUNNING, from_=[JobStatus.QUEUED], **kwargs)


def job_fail(job_id: int, message: str) -> bool:
    return job_transition(job_id, JobStatus.ERROR, from_=JobStatus.active(), message=message)


def job_abort(job: Job) -> None:
    if not job.is_active:
        raise JobError(f"This job is already {job.get_status_display().lower()}; there is nothing to abort.")
    job_transition(job.pk, JobStatus.ABORTED, from_=JobStatus.active(), message="Aborted by the user.")


def job_set_progress(job_id: int, progress: float, eta_seconds: float | None) -> None:
    Job.objects.filter(pk=job_id).update(progress=progress, eta_seconds=eta_seconds)
    publish(job_id, {"type": "progress", "progress": progress, "eta": eta_seconds})


def job_update(job: Job, *, name: str | None = None, group: str | None = None, notes: str | None = None) -> Job:
    """Edit what a person may change at any time: the name, the group and the notes."""
    if name is not None:
        if not name.strip():
            raise JobError("The name cannot be empty.", field="name")
        job.name = name.strip()[:200]
    if group is not None:
        job.group = group.strip()[:100]
    if notes is not None:
        job.notes = notes
    job.save(update_fields=["name", "group", "notes"])
    publish(job.pk, {"type": "updated", "name": job.name, "group": job.group}, broadcast=True)
    return job


def job_delete(job: Job) -> None:
    """Delete a job's rows and files. A running job is aborted first so its process ends."""
    if job.is_active:
        job_transition(job.pk, JobStatus.ABORTED, from_=JobStatus.active(), message="Deleted by the user.")
    job_id = job.pk
    directory = job.directory
    with transaction.atomic():
        job.delete()
        publish(job_id, {"type": "deleted"}, broadcast=True)
    # Files go after the rows are gone, so a reader never sees a row without its files.
    shutil.rmtree(directory, ignore_errors=True)


# -- steering the GPU queue (admins: the cluster console and the API) --------------------


def queue_move(job: Job, where: str) -> None:
    """Move a queued job up, down, to the top or to the bottom of its priority."""
    from .scheduler import queued_jobs, schedule_on_commit

    if job.status != JobStatus.QUEUED:
        raise JobError("Only a queued job can be moved.")
    same = list(queued_jobs().filter(priority=job.priority).values_list("pk", "queue_position"))
    index = next(i for i, (pk, _) in enumerate(same) if pk == job.pk)
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
    from .scheduler import schedule_on_commit

    if priority not in Priority.values:
        raise JobError(f"Pick a priority among {', '.join(Priority.labels)}.")
    Job.objects.filter(pk=job.pk).update(priority=priority)
    schedule_on_commit()


def queue_hold(job: Job, held: bool) -> None:
    """Hold a queued job (it keeps its place, does not start) or release it."""
    from .scheduler import schedule_on_commit

    if held and job.status != JobStatus.QUEUED:
        raise JobError("Only a queued job can be held.")
    Job.objects.filter(pk=job.pk).update(held=held)
    publish(job.pk, {"type": "queue", "held": held})
    schedule_on_commit()


def device_set_enabled(device, enabled: bool) -> None:  # noqa: ANN001 - a Device
    """Drain (its current job finishes, no new one starts) or enable a device."""
    from .models import Device
    from .scheduler import schedule_on_commit

    Device.objects.filter(pk=device.pk).update(enabled=enabled)
    schedule_on_commit()


def user_limit_set(user, max_devices: int | None) -> None:  # noqa: ANN001
    """Set a user's device limit (0: no limit), or None to use the default again."""
    from .models import DeviceLimit
    from .scheduler import schedule_on_commit

    if max_devices is None:
        DeviceLimit.objects.filter(user=user).delete()
    else:
        if max_devices < 0:
            raise JobError("A limit is 0 (no limit) or more devices.")
        DeviceLimit.objects.update_or_create(user=user, defaults={"max_devices": max_devices})
    schedule_on_commit()
