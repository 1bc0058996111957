"""Run network code outside the web process: a child Python with a time limit, a memory
limit and no GPU, talking JSON over stdin/stdout.

The web process never imports user code. "Visualize" on the form and classifying with a
custom network both come here; `python -m models_app.sandbox` is the child side.

Requests: {"task": "visualize", "network", "code", "input_shape", "num_classes"}
          {"task": "classify", "network", "code", "input_shape", "num_classes", "weights",
           "input" (an .npz of the preprocessed input and the resized image), "crop_size", "views"}
Replies:  {"ok": true, ...} or {"ok": false, "error": "...", "line": N | null}
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from typing import Any


class SandboxError(Exception):
    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def run_sandboxed(request: dict[str, Any], *, timeout: float | None = None, memory_bytes: int | None = None) -> dict[str, Any]:
    """Run one request in a fresh child. Raises SandboxError with a message for the user."""
    from django.conf import settings

    timeout = timeout or settings.SANDBOX_SECONDS
    memory = memory_bytes or settings.SANDBOX_MEMORY_BYTES

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (int(timeout) + 1, int(timeout) + 1))
        os.setsid()

    try:
        proc = subprocess.run(
            [sys.executable, "-m", "models_app.sandbox"],
            input=json.dumps(request).encode(),
            capture_output=True,
            timeout=timeout,
            cwd=str(settings.BASE_DIR),
            env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2"},
            preexec_fn=limits,  # noqa: PLW1509 - no threads are started before exec
        )
    except subprocess.TimeoutExpired:
        raise SandboxError(f"The network took longer than {timeout:g} s to build and run; simplify it or check for endless loops.") from None
    lines = [line for line in proc.stdout.decode("utf-8", "replace").splitlines() if line.startswith("{")]
    if not lines:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        hint = " It may have run out of memory." if proc.returncode in (-9, 1) and not tail else ""
        raise SandboxError(f"The network process ended without an answer (exit {proc.returncode}).{hint} {' '.join(tail)}".strip())
    reply = json.loads(lines[-1])
    if not reply.get("ok"):
        raise SandboxError(reply.get("error", "unknown error"), reply.get("line"))
    return reply


# -- child side ------------------------------------------------------------------------


def _visualize(net: Any, input_shape: list[int]) -> dict[str, Any]:
    """Every leaf layer in the order it runs, with its output shape and parameters."""
    import torch

    from models_app.network_views import output_shape

    layers: list[dict[str, Any]] = []
    hooks = []
    for name, module in net.named_modules():
        if name and not list(module.children()):

            def hook(mod: Any, inputs: Any, output: Any, name: str = name) -> None:
                layers.append(
                    {
                        "name": name,
                        "type": type(mod).__name__,
                        "output_shape": output_shape(output),
                        "params": sum(p.numel() for p in mod.parameters(recurse=False)),
                        "depth": name.count("."),
                    }
                )

            hooks.append(module.register_forward_hook(hook))
    net.eval()
    with torch.no_grad():
        output = net(torch.zeros(1, *input_shape))
    for h in hooks:
        h.remove()
    total = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return {"layers": layers, "output_shape": output_shape(output), "total_params": total, "trainable_params": trainable}


def _classify(net: Any, request: dict[str, Any]) -> dict[str, Any]:
    """The inference worker's answer (models_app/network_views.py), for user code."""
    import numpy as np
    import torch

    from models_app.network_views import analyse

    state = torch.load(request["weights"], map_location="cpu", weights_only=True)
    net.load_state_dict(state.get("model", state))
    with np.load(request["input"]) as data:
        x, resized = torch.from_numpy(data["x"]), data["resized"]
    return analyse(net, x, resized, crop_size=request.get("crop_size"), views=bool(request.get("views")))


def _handle(request: dict[str, Any]) -> dict[str, Any]:
    from models_app.networks import NetworkCodeError, build_network, describe_code_error

    try:
        net = build_network(request["network"], request.get("code", ""), tuple(request["input_shape"]), int(request["num_classes"]))
        if request["task"] == "visualize":
            return {"ok": True, **_visualize(net, request["input_shape"])}
        return {"ok": True, **_classify(net, request)}
    except NetworkCodeError as exc:
        return {"ok": False, "error": str(exc), "line": exc.line}
    except MemoryError:
        return {"ok": False, "error": "The network ran out of memory in the preview; it may be too large for this input size."}
    except Exception as exc:  # noqa: BLE001 - everything user code raises goes back as a message
        error = describe_code_error(exc, "The network failed on a test input")
        return {"ok": False, "error": str(error), "line": error.line}


def main() -> int:
    request = json.loads(sys.stdin.read())
    reply = _handle(request)
    sys.stdout.write(json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
