"""Devices: registration of what a pinned worker offers (workers/hardware.py), its
heartbeat with live stats, and the reaper that notices lost workers.

A device worker is a Celery worker started with DIGITS_DEVICE=gpu:<index> (and
CUDA_VISIBLE_DEVICES=<index>) or DIGITS_DEVICE=cpu:<index>; `manage.py serve` starts one
per GPU, or DIGITS_CPU_DEVICES of them on a host without GPUs. Each consumes only its own
queue (`device.<uuid>`), so the scheduler alone decides what runs where.
"""
from __future__ import annotations

from datetime import timedelta

import logging
import threading
import time
from typing import Any

import psutil
from django.conf import settings
from django.db import close_old_connections
from django.db.models import Q
from django.utils import timezone

from .hardware import DeviceInfo, read_stats
from .live import store_stats
from .models import Allocation, Device
from .ranks import lost_rank_check
from .scheduler import queued_jobs, schedule
from .services import allocation_interrupt

log = logging.getLogger(__name__)


# -- registration, heartbeat and the reaper ----------------------------------------------


def register(info: DeviceInfo, worker: str) -> Device:
    """Create or refresh this device's row. An allocation its worker had already started
    belongs to a previous life of this worker (killed, host rebooted): that job is
    interrupted and requeued to resume."""
    device, _ = Device.objects.update_or_create(
        uuid=info.uuid,
        defaults={
            "host": settings.HOST_NAME,
            "address": settings.HOST_ADDRESS,
            "kind": info.kind,
            "index": info.index,
            "name": info.name,
            "memory_total": info.memory_total,
            "worker": worker,
            "last_seen": timezone.now(),
        },
    )
    leftovers = Allocation.objects.filter(device=device, released_at__isnull=True, started_at__isnull=False)
    for allocation in leftovers:
        allocation_interrupt(allocation, f"The worker of {device.label} restarted while running it")
    log.info("device %s registered (%s, %s)", device.label, info.name, info.uuid)
    return device


def heartbeat(device_id: int, info: DeviceInfo) -> dict[str, Any] | None:
    """Store the stats on the row (last seen) and in Redis (live, read by the console).
    Redis being down only loses the live view. None: the row is gone (an admin deleted
    it) and the device must register again."""
    stats = read_stats(info)
    if not Device.objects.filter(pk=device_id).update(last_seen=timezone.now(), stats=stats):
        return None
    store_stats(info.uuid, stats)
    return stats


def reap() -> int:
    """Release the allocations of devices that stopped heartbeating and requeue their
    jobs. Any live worker runs this; the job's attempt number makes it idempotent."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.DEVICE_DEAD_SECONDS)
    lost = Allocation.objects.filter(released_at__isnull=True).filter(
        Q(device__last_seen__lt=cutoff) | Q(device__last_seen__isnull=True)
    ).select_related("device")
    count = 0
    for allocation in lost:
        seen = allocation.device.last_seen
        silent = f"no heartbeat for {(now - seen).total_seconds():.0f} s" if seen else "it shut down"
        allocation_interrupt(allocation, f"The worker of {allocation.device.label} stopped responding ({silent})")
        count += 1
    # A message its (live) worker never picked up: lost with a broker restart, say.
    stuck = Allocation.objects.filter(
        released_at__isnull=True, started_at__isnull=True,
        allocated_at__lt=now - timedelta(seconds=settings.RENDEZVOUS_SECONDS),
    ).select_related("device")
    for allocation in stuck:
        allocation_interrupt(
            allocation, f"The worker of {allocation.device.label} did not start it within {settings.RENDEZVOUS_SECONDS:.0f} s",
            backoff=True,
        )
        count += 1
    return count


class Heartbeat(threading.Thread):
    """Runs in the device worker's main process: heartbeat, reap, and a scheduling pass
    when jobs wait (a safety net behind the event-driven passes)."""

    def __init__(self, device_id: int, info: DeviceInfo, worker: str) -> None:
        super().__init__(name="device-heartbeat", daemon=True)
        self.device_id, self.info, self.worker = device_id, info, worker
        self.stopping = threading.Event()

    def run(self) -> None:
        psutil.cpu_percent(interval=None)  # the first reading is meaningless
        # This worker's last heartbeat that reached the database, and since when they have
        # reached it without a gap that could make a live device look dead.
        last_ok: float | None = None
        steady_since = 0.0
        failing = False
        while not self.stopping.wait(settings.DEVICE_HEARTBEAT_SECONDS):
            try:
                close_old_connections()
                if heartbeat(self.device_id, self.info) is None:
                    self.device_id = register(self.info, self.worker).pk
                now = time.monotonic()
                # (Half the dead time: a live peer's last beat may be a heartbeat older than ours.)
                if last_ok is None or now - last_ok > settings.DEVICE_DEAD_SECONDS / 2:
                    # After a database outage (or this process being stopped or starved),
                    # every device's last heartbeat is old, the live ones' too: reap only
                    # once they have all had the time to heartbeat again.
                    steady_since = now
                last_ok = now
                if now - steady_since >= settings.DEVICE_DEAD_SECONDS:
                    reap()
                # A rank whose pool process was killed (its message may never come back).
                for pk in Allocation.objects.filter(
                    device_id=self.device_id, released_at__isnull=True, started_at__isnull=False
                ).values_list("pk", flat=True):
                    lost_rank_check(pk)
                if queued_jobs().filter(held=False).exists():
                    schedule()
            except Exception:  # noqa: BLE001 - a database hiccup must not end the heartbeat
                if not failing:  # once per outage, not at every beat
                    log.warning("device heartbeat failed; retrying", exc_info=True)
                failing = True
            else:
                if failing:
                    log.warning("device heartbeat back")
                failing = False

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
