"""The solvers a model can train with, as torch.optim optimizers."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def make_optimizer(spec: dict[str, Any], params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    solver = spec.get("solver", "sgd")
    lr = float(spec["learning_rate"])
    momentum = float(spec.get("momentum", 0.9))
    decay = float(spec.get("weight_decay", 0.0))
    if solver == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=decay)
    if solver == "nesterov":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=decay, nesterov=True)
    if solver == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=decay)
    if solver == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=decay)
    if solver == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, weight_decay=decay)
    if solver == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay)
    if solver == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=decay)
    raise ValueError(f"Unknown solver {solver!r}.")
