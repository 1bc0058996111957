"""The devices this host offers: NVIDIA GPUs through NVML (nvidia-ml-py), else CPU."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


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
