"""Run network code outside the web process: a child Python with a time limit, a memory
limit and no GPU, talking JSON over stdin/stdout.

The web process never imports user code. "Visualize" on the form and classifying with a
custom network both come here; `python -m models_app.sandbox` is the child side.

Requests: {"task": "visualize", "network", "code", "input_shape", "num_classes"}
          {"task": "classify", "network", "code", "input_shape", "num_classes", "weights",
           "input" (an .npz of the preprocessed input and the resized image), "crop_size", "views",
           "segmentation" or "detection": the model's task when it is not classification}
          {"task": "import", "network", "code", "input_shape", "num_classes", "weights", "out"}:
           load uploaded weights into the network (every layer, same shapes), run it once,
           and write them as a snapshot at "out"
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
    task = "segmentation" if request.get("segmentation") else "detection" if request.get("detection") else "classification"
    return analyse(net, x, resized, crop_size=request.get("crop_size"), views=bool(request.get("views")), task=task)


def _state_dict(loaded: Any) -> dict[str, Any]:
    """The weights in an uploaded file: a state dict, or one wrapped as our snapshots and
    common checkpoints wrap it; DistributedDataParallel's `module.` prefix removed."""
    import torch

    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not loaded or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError("The file holds no state dict (a mapping of layer names to tensors). Save it with "
                         "torch.save(model.state_dict(), path).")
    if all(k.startswith("module.") for k in loaded):
        loaded = {k[len("module."):]: v for k, v in loaded.items()}
    return loaded


def _import(net: Any, request: dict[str, Any]) -> dict[str, Any]:
    import torch

    try:
        loaded = torch.load(request["weights"], map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the upload's problem
        raise ValueError(f"This is not a PyTorch weights file torch.load can read safely ({type(exc).__name__}: {exc}).") from None
    state = _state_dict(loaded)
    own = net.state_dict()
    classes = int(request["num_classes"])
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    # Only the classifier differs (its rows are the classes): another class count, as
    # torchvision's 1000 ImageNet classes. It starts afresh, to be fine-tuned.
    head = bool(wrong) and all(own[k].shape[0] == classes and state[k].shape[1:] == own[k].shape[1:] for k in wrong)
    problems = []
    if wrong and not head:
        problems.append("shapes differ: " + "; ".join(f"{k} {list(state[k].shape)} (the network has {list(own[k].shape)})"
                                                       for k in wrong[:3]) + (f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""))
    if missing:
        problems.append("missing layers: " + ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    if unexpected:
        problems.append("layers the network does not have: " + ", ".join(unexpected[:5])
                        + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""))
    if problems:
        raise ValueError(f"These weights do not fit {request['network']} with input "
                         f"{'x'.join(map(str, request['input_shape']))}: " + "; ".join(problems) + ".")
    reinitialised = wrong if head else []
    classes_before = int(state[wrong[0]].shape[0]) if head else None
    state = {k: (own[k] if k in reinitialised else v) for k, v in state.items()}
    net.load_state_dict(state)
    net.eval()
    with torch.no_grad():
        output = net(torch.zeros(1, *request["input_shape"]))
    if tuple(output.shape) != (1, int(request["num_classes"])):
        raise ValueError(f"The network's output has shape {list(output.shape)}, not [1, {request['num_classes']}].")
    if not torch.isfinite(output).all():
        raise ValueError("The network gives NaN or infinite outputs with these weights.")
    checkpoint = {"model": net.state_dict(), "network": request["network"], "num_classes": int(request["num_classes"]),
                  "input_shape": list(request["input_shape"])}
    tmp = request["out"] + ".tmp"
    torch.save(checkpoint, tmp)
    os.replace(tmp, request["out"])
    return {"params": sum(p.numel() for p in net.parameters()), "reinitialised": reinitialised, "classes_before": classes_before}


def _handle(request: dict[str, Any]) -> dict[str, Any]:
    from models_app.networks import NetworkCodeError, build_network, describe_code_error

    try:
        net = build_network(request["network"], request.get("code", ""), tuple(request["input_shape"]), int(request["num_classes"]))
        if request["task"] == "visualize":
            return {"ok": True, **_visualize(net, request["input_shape"])}
        if request["task"] == "import":
            try:
                return {"ok": True, **_import(net, request)}
            except ValueError as exc:
                return {"ok": False, "error": str(exc), "line": None}
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
