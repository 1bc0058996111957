"""Celery worker signals (imported by digits_site/celery.py, so every worker has them).

- A device worker (DIGITS_DEVICE set) adds its device's own queue, registers the device
  when ready and heartbeats until it stops.
- Every pool process, and every job child (workers/runner.py), dies with its parent, so a
  `kill -9` of a worker leaves no orphan holding a device.

Imported before Django's apps are ready: what touches models is imported in the handlers.
"""
from __future__ import annotations

import logging
from typing import Any

from celery.signals import celeryd_after_setup, worker_process_init, worker_ready, worker_shutdown

from .hardware import DeviceInfo, this_device
from .procs import die_with_parent

log = logging.getLogger(__name__)

_device: DeviceInfo | None = None
_heartbeat: Any = None  # a devices.Heartbeat


@celeryd_after_setup.connect
def _add_device_queue(sender: str, instance: Any, **kwargs: Any) -> None:
    global _device
    _device = this_device()
    if _device is not None:
        from .models import device_queue

        instance.app.amqp.queues.select_add(device_queue(_device.uuid))


@worker_ready.connect
def _register_device(sender: Any, **kwargs: Any) -> None:
    global _heartbeat
    if _device is None:
        return
    from .devices import Heartbeat, register
    from .scheduler import schedule

    device = register(_device, sender.hostname)
    _heartbeat = Heartbeat(device.pk, _device, sender.hostname)
    _heartbeat.start()
    schedule()  # a new (or returning) device may let a queued job start now


@worker_shutdown.connect
def _stop_heartbeat(**kwargs: Any) -> None:
    if _heartbeat is None or _device is None:
        return
    _heartbeat.stop()
    from .models import Device

    # Gone now, not after the heartbeat timeout: nothing new is placed here.
    Device.objects.filter(uuid=_device.uuid).update(last_seen=None)


@worker_process_init.connect
def _pool_dies_with_worker(**kwargs: Any) -> None:
    die_with_parent()
