"""The solvers a model can train with, as torch.optim optimizers."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .spec import TrainSpec

from collections.abc import Iterable

import torch


def make_optimizer(spec: TrainSpec, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    solver, lr, momentum, decay = spec.solver, spec.learning_rate, spec.momentum, spec.weight_decay
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
