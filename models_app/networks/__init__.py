"""Networks. Each standard one is a module here with

    build(input_shape: tuple[int, int, int], num_classes: int) -> torch.nn.Module
    INTENDED_INPUT = (height, width)

where input_shape is (channels, height, width). Custom networks are user code with the
same `build` function. A module's source file is what "Customize" opens on the form and
what a downloaded archive ships as network.py, so each depends on torch/torchvision only.

User code is only ever executed in child processes (training, `models_app.visualize`),
never in the web process: `load_custom` is called there.
"""
from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import sys
import traceback
import types
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    import torch

STANDARD_NETWORKS = {
    "lenet": "models_app.networks.lenet",
    "alexnet": "models_app.networks.alexnet",
    "googlenet": "models_app.networks.googlenet",
    "resnet18": "models_app.networks.resnet18",
    "resnet50": "models_app.networks.resnet50",
    "mobilenet_v3": "models_app.networks.mobilenet_v3",
    "efficientnet_b0": "models_app.networks.efficientnet_b0",
    "vit_b_16": "models_app.networks.vit_b_16",
    # Segmentation (TASK = "segmentation" in the module).
    "unet_small": "models_app.networks.unet_small",
    "fcn_resnet50": "models_app.networks.fcn_resnet50",
    "deeplabv3_mobilenet_v3_large": "models_app.networks.deeplabv3_mobilenet_v3_large",
    "deeplabv3_resnet50": "models_app.networks.deeplabv3_resnet50",
    "lraspp_mobilenet_v3_large": "models_app.networks.lraspp_mobilenet_v3_large",
    # Detection (TASK = "detection"): torchvision detection models.
    "fcos_small": "models_app.networks.fcos_small",
    "fasterrcnn_resnet50_fpn": "models_app.networks.fasterrcnn_resnet50_fpn",
    "retinanet_resnet50_fpn": "models_app.networks.retinanet_resnet50_fpn",
    "fcos_resnet50_fpn": "models_app.networks.fcos_resnet50_fpn",
    "ssdlite320_mobilenet_v3_large": "models_app.networks.ssdlite320_mobilenet_v3_large",
}
# How tracebacks name custom code, so an error can point at the user's line.
CUSTOM_FILENAME = "network.py"


class NetworkCodeError(Exception):
    """User code failed: the message names the line in the user's code when there is one."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def network_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(STANDARD_NETWORKS[name])
    except KeyError:
        raise ValueError(f"Unknown network {name!r}; choose one of {', '.join(STANDARD_NETWORKS)}.") from None


def network_source_path(name: str) -> Path:
    """The module's file, found without importing it (importing it imports torch)."""
    if name not in STANDARD_NETWORKS:
        raise ValueError(f"Unknown network {name!r}; choose one of {', '.join(STANDARD_NETWORKS)}.")
    spec = importlib.util.find_spec(STANDARD_NETWORKS[name])
    assert spec is not None and spec.origin is not None
    return Path(spec.origin)


def network_source(name: str) -> str:
    return network_source_path(name).read_text()


@functools.cache
def network_constants(name: str) -> dict[str, object]:
    """A standard network's module-level constants (INTENDED_INPUT, MIN_SIDE,
    SIDE_MULTIPLE), read from its source: the web process checks a request without
    importing torch."""
    constants: dict[str, object] = {}
    for node in ast.parse(network_source(name)).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target = node.targets[0].id
            if target.isupper():
                try:
                    constants[target] = ast.literal_eval(node.value)
                except ValueError:
                    continue
    return constants


def network_task(name: str) -> str:
    """What a standard network is for: "classification", "segmentation" or "detection"
    (its TASK)."""
    return str(network_constants(name).get("TASK", "classification"))


def intended_input(name: str) -> tuple[int, int]:
    height, width = cast(tuple[int, int], network_constants(name)["INTENDED_INPUT"])
    return int(height), int(width)


def check_input(name: str, label: str, input_shape: tuple[int, int, int]) -> None:
    """Raise ValueError if the standard network `name` cannot take this input (the same
    rule its build() applies)."""
    constants = network_constants(name)
    _, height, width = input_shape
    multiple = constants.get("SIDE_MULTIPLE")
    if isinstance(multiple, int) and (height != width or height % multiple):
        raise ValueError(
            f"{label} needs square images whose side is a multiple of {multiple} (like 224x224), got {width}x{height}."
        )
    factor = constants.get("SIDE_FACTOR")
    if isinstance(factor, int) and (height % factor or width % factor):
        raise ValueError(f"{label} needs sides that are multiples of {factor}, got {width}x{height}.")
    side = constants.get("MIN_SIDE", 1)
    if isinstance(side, int) and min(height, width) < side:
        raise ValueError(f"{label} needs images of at least {side}x{side} pixels, got {width}x{height}.")


def user_line(exc: BaseException) -> int | None:
    """The innermost line of the user's code in an exception's traceback."""
    if isinstance(exc, SyntaxError) and exc.filename == CUSTOM_FILENAME:
        return exc.lineno
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == CUSTOM_FILENAME:
            line = frame.lineno
    return line


def describe_code_error(exc: BaseException, what: str) -> NetworkCodeError:
    line = user_line(exc)
    where = f"Line {line} of your network code: " if line else ""
    detail = exc.msg if isinstance(exc, SyntaxError) else str(exc)
    return NetworkCodeError(f"{where}{what}: {type(exc).__name__}: {detail}", line)


def load_custom(code: str) -> ModuleType:
    """Execute user code as a module (child processes only). Raises NetworkCodeError."""
    module = types.ModuleType("network")
    module.__file__ = CUSTOM_FILENAME
    try:
        compiled = compile(code, CUSTOM_FILENAME, "exec")
        # linecache lets tracebacks show the user's source lines.
        import linecache

        linecache.cache[CUSTOM_FILENAME] = (len(code), None, code.splitlines(True), CUSTOM_FILENAME)
        exec(compiled, module.__dict__)  # noqa: S102 - the point: users with the permission run their code
    except BaseException as exc:  # noqa: BLE001 - any failure of user code is reported, not raised
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise describe_code_error(exc, "Your network code failed to load") from exc
    if not callable(getattr(module, "build", None)):
        raise NetworkCodeError("Your network code must define build(input_shape, num_classes) returning a torch.nn.Module.")
    sys.modules.setdefault("network", module)
    return module


def build_network(network: str, custom_code: str, input_shape: tuple[int, int, int], num_classes: int) -> torch.nn.Module:
    """Build the network (child processes only for custom code). Raises ValueError for a
    standard network that cannot take this input, NetworkCodeError for user code."""
    import torch

    if network != "custom":
        return network_module(network).build(input_shape, num_classes)
    module = load_custom(custom_code)
    try:
        net = module.build(tuple(input_shape), num_classes)
    except (MemoryError, torch.OutOfMemoryError):
        raise  # the caller's advice about batch sizes applies
    except Exception as exc:  # noqa: BLE001
        raise describe_code_error(exc, "build() failed") from exc
    if not isinstance(net, torch.nn.Module):
        raise NetworkCodeError(f"build() must return a torch.nn.Module, it returned {type(net).__name__}.")
    return net
