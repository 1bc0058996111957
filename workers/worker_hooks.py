"""Celery worker signals (imported by digits_site/celery.py, so every worker has them).

- A device worker (DIGITS_DEVICE set) adds its device's own queue, registers the device
  when ready and heartbeats until it stops, and starts the zygote its jobs' children
  are forked from (workers/zygote.py).
- Every pool process, and every job child (workers/runner.py), dies with its parent, so a
  `kill -9` of a worker leaves no orphan holding a device.

Imported before Django's apps are ready: what touches models is imported in the handlers.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Any

from celery.signals import celeryd_after_setup, worker_process_init, worker_ready, worker_shutdown

from .hardware import DeviceInfo, this_device
from .procs import die_with_parent

log = logging.getLogger(__name__)

_device: DeviceInfo | None = None
_heartbeat: Any = None  # a devices.Heartbeat
_zygote: subprocess.Popen[bytes] | None = None


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
    if _device is None:  # a worker of device-less jobs (dataset builds)
        from .runner import recover_lost_runs

        if recovered := recover_lost_runs():
            log.info("requeued %d job(s) whose worker process was lost", recovered)
        return
    from .devices import Heartbeat, register
    from .scheduler import schedule

    device = register(_device, sender.hostname)
    _heartbeat = Heartbeat(device.pk, _device, sender.hostname)
    _heartbeat.start()
    _start_zygote(_device)
    schedule()  # a new (or returning) device may let a queued job start now


def _start_zygote(device: DeviceInfo) -> None:
    """Pre-import the device kinds' child modules in a zygote (with the environment their
    process needs from its start: malloc settings, the CPU device's thread count)."""
    global _zygote
    from django.conf import settings

    from . import kinds
    from .zygote import ZygoteUnavailable, socket_path

    if not settings.ZYGOTE:
        return
    try:
        path = socket_path(device.uuid, str(settings.DATA_DIR))
    except ZygoteUnavailable as exc:
        log.warning("%s", exc)
        return
    device_kinds = [k for k in kinds.all_kinds() if k.uses_devices]
    env = {**os.environ}
    for kind in device_kinds:
        env.update(kind.preload_env())
    if device.kind == "cpu":
        threads = str(settings.CPU_DEVICE_THREADS)
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    modules = sorted({k.child_module() for k in device_kinds})
    _zygote = subprocess.Popen(
        [sys.executable, "-m", "workers.zygote", "--socket", str(path), "--preload", *modules],
        cwd=settings.BASE_DIR, env=env, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent,
    )


@worker_shutdown.connect
def _stop_heartbeat(**kwargs: Any) -> None:
    if _zygote is not None and _zygote.poll() is None:
        _zygote.terminate()
    if _heartbeat is None or _device is None:
        return
    _heartbeat.stop()
    from .models import Device

    # Gone now, not after the heartbeat timeout: nothing new is placed here.
    Device.objects.filter(uuid=_device.uuid).update(last_seen=None)


@worker_process_init.connect
def _pool_dies_with_worker(**kwargs: Any) -> None:
    die_with_parent()
