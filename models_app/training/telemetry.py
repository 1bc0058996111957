"""The training child's own device readings, sent as Telemetry events and charted on the
model page beside its metrics: for a GPU (NVML) utilisation, memory used and total,
temperature and power; for a CPU device the process's CPU use (percent of the cores it
was given) and resident memory. No Django here: the child imports it."""
from __future__ import annotations

import time
from typing import Any

import psutil

EVERY_SECONDS = 2.0


class DeviceReader:
    def __init__(self, device: Any, threads: int) -> None:
        self.kind = device.type
        self.threads = max(1, threads)
        self.last = 0.0
        self.handle: Any = None
        self.process = psutil.Process()
        self.process.cpu_percent(None)  # the first call starts the measurement window
        if self.kind == "cuda":
            try:
                import pynvml
                import torch

                pynvml.nvmlInit()
                index = device.index if device.index is not None else torch.cuda.current_device()
                # NVML counts every GPU of the host; CUDA_VISIBLE_DEVICES renumbers them.
                uuid = torch.cuda.get_device_properties(index).uuid
                self.handle = next(
                    (h for h in (pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount()))
                     if str(uuid).replace("GPU-", "") in str(pynvml.nvmlDeviceGetUUID(h))),
                    pynvml.nvmlDeviceGetHandleByIndex(index),
                )
            except Exception:  # no NVML: the run goes on without GPU readings
                self.handle = None

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last < EVERY_SECONDS:
            return False
        self.last = now
        return True

    def read(self) -> dict[str, float | None]:
        values: dict[str, float | None] = {
            "cpu_percent": round(self.process.cpu_percent(None) / self.threads, 1),
            "rss_mb": round(self.process.memory_info().rss / 2**20, 1),
        }
        if self.handle is not None:
            import pynvml

            def safe(read: Any) -> float | None:
                try:
                    return float(read())
                except Exception:  # a reading this GPU does not support
                    return None

            memory = safe(lambda: pynvml.nvmlDeviceGetMemoryInfo(self.handle).used)
            total = safe(lambda: pynvml.nvmlDeviceGetMemoryInfo(self.handle).total)
            values.update(
                gpu_util=safe(lambda: pynvml.nvmlDeviceGetUtilizationRates(self.handle).gpu),
                gpu_mem_mb=round(memory / 2**20, 1) if memory is not None else None,
                gpu_mem_total_mb=round(total / 2**20, 1) if total is not None else None,
                gpu_temp=safe(lambda: pynvml.nvmlDeviceGetTemperature(self.handle, pynvml.NVML_TEMPERATURE_GPU)),
                gpu_power_w=safe(lambda: pynvml.nvmlDeviceGetPowerUsage(self.handle) / 1000),
            )
        return values
