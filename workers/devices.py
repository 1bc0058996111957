"""Devices: what a pinned worker offers (an NVIDIA GPU through NVML, or a CPU "device"),
its registration, its heartbeat with live stats, and the reaper that notices lost workers.

A device worker is a Celery worker started with DIGITS_DEVICE=gpu:<index> (and
CUDA_VISIBLE_DEVICES=<index>) or DIGITS_DEVICE=cpu:<index>; `manage.py serve` starts one
per GPU, or DIGITS_CPU_DEVICES of them on a host without GPUs. Each consumes only its own
queue (`device.<uuid>`), so the scheduler alone decides what runs where.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

import psutil
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

log = logging.getLogger(__name__)

DEVICE_ENV = "DIGITS_DEVICE"
LIVE_KEY = "digits:device:{uuid}"


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "gpu" or "cpu"
    index: int
    uuid: str
    name: str
    memory_total: int


def gpu_count() -> int:
    """Number of NVIDIA GPUs NVML sees; 0 when there is no driver or no GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no libnvidia-ml.so, no driver: a CPU host
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU"


def this_device(spec: str | None = None) -> DeviceInfo | None:
    """The device this worker is pinned to (from DIGITS_DEVICE), or None for other workers."""
    spec = spec if spec is not None else os.environ.get(DEVICE_ENV, "")
    if not spec:
        return None
    kind, _, index_text = spec.partition(":")
    index = int(index_text or 0)
    if kind == "gpu":
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        return DeviceInfo(
            kind="gpu",
            index=index,
            uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
            name=_text(pynvml.nvmlDeviceGetName(handle)),
            memory_total=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
        )
    if kind != "cpu":
        raise ValueError(f"{DEVICE_ENV} must be gpu:<index> or cpu:<index>, not {spec!r}")
    return DeviceInfo(
        kind="cpu",
        index=index,
        uuid=f"cpu-{settings.HOST_NAME}-{index}",
        name=f"{_cpu_model()} ({settings.CPU_DEVICE_THREADS} thread{'s' if settings.CPU_DEVICE_THREADS != 1 else ''})",
        memory_total=psutil.virtual_memory().total // max(1, settings.CPU_DEVICES),
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_stats(info: DeviceInfo) -> dict[str, Any]:
    """Utilisation %, memory used/total (bytes), temperature (°C) and power (W); None where
    the device cannot tell."""
    if info.kind == "gpu":
        import pynvml

        handle = pynvml.nvmlDeviceGetHandleByIndex(info.index)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        stats: dict[str, Any] = {
            "utilization": pynvml.nvmlDeviceGetUtilizationRates(handle).gpu,
            "memory_used": int(memory.used),
            "memory_total": int(memory.total),
        }
        for key, read in (
            ("temperature", lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)),
            ("power", lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0),
        ):
            try:
                stats[key] = read()
            except pynvml.NVMLError:  # not supported on this board
                stats[key] = None
        return stats
    memory = psutil.virtual_memory()
    temperature = None
    try:
        readings = [t.current for ts in psutil.sensors_temperatures().values() for t in ts if t.current]
        temperature = max(readings) if readings else None
    except (AttributeError, OSError):
        pass
    return {
        "utilization": psutil.cpu_percent(interval=None),
        "memory_used": int(memory.total - memory.available),
        "memory_total": int(memory.total),
        "temperature": temperature,
        "power": None,
    }


def die_with_parent() -> None:
    """Linux: get SIGKILL when the parent dies, so a `kill -9` of a worker also ends its
    pool and its training child instead of leaving an orphan holding the GPU."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


# -- registration, heartbeat and the reaper ----------------------------------------------


def register(info: DeviceInfo, worker: str):  # noqa: ANN201 - a Device
    """Create or refresh this device's row. An allocation its worker had already started
    belongs to a previous life of this worker (killed, host rebooted): that job is
    interrupted and requeued to resume."""
    from .models import Allocation, Device

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
        interrupt(allocation, f"The worker of {device.label} restarted while running it")
    log.info("device %s registered (%s, %s)", device.label, info.name, info.uuid)
    return device


def heartbeat(device_id: int, info: DeviceInfo) -> dict[str, Any] | None:
    """Store the stats on the row (last seen) and in Redis (live, read by the console).
    Redis being down only loses the live view. None: the row is gone (an admin deleted
    it) and the device must register again."""
    from .models import Device

    stats = read_stats(info)
    if not Device.objects.filter(pk=device_id).update(last_seen=timezone.now(), stats=stats):
        return None
    try:
        from .scheduler import _client

        _client().set(LIVE_KEY.format(uuid=info.uuid), json.dumps(stats), ex=max(1, int(settings.DEVICE_DEAD_SECONDS)))
    except Exception:  # noqa: BLE001 - the live view is best effort
        log.debug("could not publish stats of device %s", device_id, exc_info=True)
    return stats


def live_stats(uuids: list[str]) -> dict[str, dict[str, Any]]:
    """The latest stats from Redis, for devices that heartbeated recently."""
    from .scheduler import _client

    if not uuids:
        return {}
    try:
        values = _client().mget([LIVE_KEY.format(uuid=u) for u in uuids])
    except Exception:  # noqa: BLE001 - fall back to the rows' last stats
        return {}
    return {u: json.loads(v) for u, v in zip(uuids, values) if v}


def reap() -> int:
    """Release the allocations of devices that stopped heartbeating and requeue their
    jobs. Any live worker runs this; the job's attempt number makes it idempotent."""
    from django.db.models import Q

    from .models import Allocation

    now = timezone.now()
    cutoff = now - timezone.timedelta(seconds=settings.DEVICE_DEAD_SECONDS)
    lost = Allocation.objects.filter(released_at__isnull=True).filter(
        Q(device__last_seen__lt=cutoff) | Q(device__last_seen__isnull=True)
    ).select_related("device")
    count = 0
    for allocation in lost:
        seen = allocation.device.last_seen
        silent = f"no heartbeat for {(now - seen).total_seconds():.0f} s" if seen else "it shut down"
        interrupt(allocation, f"The worker of {allocation.device.label} stopped responding ({silent})")
        count += 1
    # A message its (live) worker never picked up: lost with a broker restart, say.
    stuck = Allocation.objects.filter(
        released_at__isnull=True, started_at__isnull=True,
        allocated_at__lt=now - timezone.timedelta(seconds=settings.RENDEZVOUS_SECONDS),
    ).select_related("device")
    for allocation in stuck:
        interrupt(allocation, f"The worker of {allocation.device.label} did not start it within {settings.RENDEZVOUS_SECONDS:.0f} s")
        count += 1
    return count


def interrupt(allocation, reason: str) -> None:  # noqa: ANN001 - an Allocation
    """A rank was lost: release it, and requeue its job (if this attempt is still the
    job's) to resume from its last snapshot on whatever devices are free."""
    from .models import AllocationOutcome, Allocation

    Allocation.objects.filter(pk=allocation.pk, released_at__isnull=True).update(
        released_at=timezone.now(), outcome=AllocationOutcome.LOST
    )
    if allocation.job_id is not None:
        from models_app.services import model_interrupt

        model_interrupt(allocation.job_id, allocation.attempt, reason)


class Heartbeat(threading.Thread):
    """Runs in the device worker's main process: heartbeat, reap, and a scheduling pass
    when jobs wait (a safety net behind the event-driven passes)."""

    def __init__(self, device_id: int, info: DeviceInfo, worker: str) -> None:
        super().__init__(name="device-heartbeat", daemon=True)
        self.device_id, self.info, self.worker = device_id, info, worker
        self.stopping = threading.Event()

    def run(self) -> None:
        from .scheduler import queued_jobs, schedule

        psutil.cpu_percent(interval=None)  # the first reading is meaningless
        while not self.stopping.wait(settings.DEVICE_HEARTBEAT_SECONDS):
            try:
                close_old_connections()
                if heartbeat(self.device_id, self.info) is None:
                    self.device_id = register(self.info, self.worker).pk
                reap()
                if queued_jobs().filter(held=False).exists():
                    schedule()
            except Exception:  # noqa: BLE001 - a database hiccup must not end the heartbeat
                log.warning("device heartbeat failed; retrying", exc_info=True)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
