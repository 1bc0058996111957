"""Helpers for designing a model before it trains: the network catalogue, a network's
source ("Customize"), the layer table ("Visualize") and the learning-rate preview."""
from __future__ import annotations

import ast

from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.http import QueryDict

from datasets.models import Dataset
from workers.errors import JobError, NotFound

from .models import LrPolicy, Network, TrainedModel
from .networks import STANDARD_NETWORKS, intended_input, network_source, network_task
from .sandbox import SandboxError, run_sandboxed
from .services import can_submit_code
from .training.lr_policy import LrSchedule, parse_steps


def network_catalogue() -> list[dict[str, Any]]:
    labels = dict(Network.choices)
    return [
        {"name": name, "label": labels[name], "intended_input": list(intended_input(name)), "task": network_task(name)}
        for name in STANDARD_NETWORKS
    ]


def network_details(name: str) -> dict[str, Any]:
    if name not in STANDARD_NETWORKS:
        raise NotFound(f"No standard network {name!r}; choose one of {', '.join(STANDARD_NETWORKS)}.")
    source = network_source(name)
    return {
        "name": name,
        "label": dict(Network.choices)[name],
        "intended_input": list(intended_input(name)),
        # Read from the source: importing the module would import torch into the web server.
        "description": (ast.get_docstring(ast.parse(source)) or "").strip().splitlines()[0],
        "source": source,
    }


def visualize(user: User | AnonymousUser, *, dataset: Dataset, network: str, custom_code: str = "", crop_size: int | None = None) -> dict[str, Any]:
    """Layers with output shapes and parameter counts, computed in the sandbox child.
    Errors come back as {"error", "line"} so the form can point at the user's line."""
    if network == Network.CUSTOM and not can_submit_code(user):
        raise JobError("Running custom network code needs the 'Can train networks from custom PyTorch code' permission.")
    if network != Network.CUSTOM and network not in STANDARD_NETWORKS:
        raise JobError(f"Unknown network {network!r}.")
    shape = [dataset.channels, crop_size or dataset.image_height, crop_size or dataset.image_width]
    request = {
        "task": "visualize", "network": network, "code": custom_code, "input_shape": shape,
        "num_classes": max(dataset.num_classes, 2),
    }
    try:
        reply = run_sandboxed(request)
    except SandboxError as exc:
        return {"ok": False, "error": str(exc), "line": exc.line, "input_shape": shape}
    return {**reply, "input_shape": shape}


def _number(query: QueryDict, name: str, default: float) -> float:
    raw = query.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise JobError(f"{name} must be a number.") from None


def lr_preview(query: QueryDict) -> dict[str, Any]:
    """{"points": [[epoch, lr], ...]} for the form's chart, from the same function training uses."""
    defaults = {f.name: f.default for f in TrainedModel._meta.get_fields() if hasattr(f, "default")}
    policy = query.get("lr_policy") or LrPolicy.FIXED
    if policy not in LrPolicy.values:
        raise JobError(f"Unknown learning-rate policy {policy!r}.")
    epochs = _number(query, "epochs", defaults["epochs"])
    if not 0 < epochs <= 10_000:
        raise JobError("epochs must be above 0 and at most 10000.")
    try:
        steps = tuple(parse_steps(query.get("lr_steps", "") or ""))
    except ValueError as exc:
        raise JobError(str(exc)) from None
    schedule = LrSchedule(
        base_lr=_number(query, "learning_rate", defaults["learning_rate"]),
        policy=policy,
        step_size=max(_number(query, "lr_step_size", defaults["lr_step_size"]), 0.01),
        steps=steps,
        gamma=_number(query, "lr_gamma", defaults["lr_gamma"]),
        power=_number(query, "lr_power", defaults["lr_power"]),
        warmup_epochs=_number(query, "lr_warmup_epochs", defaults["lr_warmup_epochs"]),
    )
    try:
        points = schedule.curve(epochs)
    except (OverflowError, ValueError, ZeroDivisionError) as exc:
        raise JobError(f"These values give no usable curve ({exc}).") from None
    return {"points": [[round(e, 6), lr] for e, lr in points]}
