"""Standard networks. Each is a module with `build(input_shape, num_classes)`; the module's
source file is what a downloaded archive ships as network.py."""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

STANDARD_NETWORKS = {"lenet": "models_app.networks.lenet"}


def network_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(STANDARD_NETWORKS[name])
    except KeyError:
        raise ValueError(f"Unknown network {name!r}; choose one of {', '.join(STANDARD_NETWORKS)}.") from None


def network_source_path(name: str) -> Path:
    return Path(network_module(name).__file__ or "")
