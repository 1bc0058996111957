"""What a pinned worker offers: an NVIDIA GPU (through NVML) or a CPU "device", and its
live stats. No database here: `manage.py serve` and the worker's start-up read it before
Django's models are loaded."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import psutil
from django.conf import settings

DEVICE_ENV = "DIGITS_DEVICE"


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
