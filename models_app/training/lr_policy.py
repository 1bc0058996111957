"""Learning-rate policies: the Caffe formulas DIGITS used, over training progress.

As in DIGITS, the policy is expressed in percent of training rather than iterations, so it
does not change with the dataset or batch size: x = 100 * iteration / total_iterations.

    fixed      lr
    step       lr * gamma ^ floor(x / step_size)
    multistep  lr * gamma ^ (number of steps <= x)
    exp        lr * gamma ^ x
    inv        lr * (1 + gamma * x) ^ -power
    poly       lr * (1 - x / 100) ^ power
    sigmoid    lr / (1 + exp(-gamma * (x - step_size)))
    cosine     lr * (1 + cos(pi * x / 100)) / 2

A linear warm-up (warmup_epochs > 0) multiplies the result by (iteration + 1) / warm-up
iterations until warm-up ends. The training loop and the form's preview chart both call
`learning_rate`, so the preview is exactly what training will use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .spec import TrainSpec

import math
from dataclasses import dataclass, field


def parse_steps(text: str) -> list[float]:
    """'50, 85' -> [50.0, 85.0]; raises ValueError with a message for the form."""
    steps: list[float] = []
    for part in (p.strip() for p in text.replace(";", ",").split(",")):
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"{part!r} is not a number; give percentages of training like 50,85.") from None
        if not 0 < value < 100:
            raise ValueError(f"Each step must be between 0 and 100 % of training, got {value:g}.")
        steps.append(value)
    if steps != sorted(steps):
        raise ValueError("Give the steps in increasing order, like 50,85.")
    return steps


@dataclass(frozen=True)
class LrSchedule:
    base_lr: float
    policy: str = "fixed"
    step_size: float = 33.0  # percent of training
    steps: tuple[float, ...] = field(default_factory=tuple)  # percents, increasing
    gamma: float = 0.1
    power: float = 1.0
    warmup_epochs: float = 0.0

    @classmethod
    def from_spec(cls, spec: TrainSpec) -> LrSchedule:
        return cls(
            base_lr=spec.learning_rate,
            policy=spec.lr_policy,
            step_size=spec.lr_step_size,
            steps=tuple(parse_steps(spec.lr_steps or "")),
            gamma=spec.lr_gamma,
            power=spec.lr_power,
            warmup_epochs=spec.lr_warmup_epochs,
        )

    def factor(self, x: float) -> float:
        """The policy's multiplier at x percent of training (no warm-up)."""
        p = self.policy
        if p == "fixed":
            return 1.0
        if p == "step":
            return self.gamma ** math.floor(x / self.step_size)
        if p == "multistep":
            return self.gamma ** sum(1 for s in self.steps if x >= s)
        if p == "exp":
            return self.gamma**x
        if p == "inv":
            return (1.0 + self.gamma * x) ** -self.power
        if p == "poly":
            return max(0.0, 1.0 - x / 100.0) ** self.power
        if p == "sigmoid":
            z = -self.gamma * (x - self.step_size)
            return 0.0 if z > 700 else 1.0 / (1.0 + math.exp(z))
        if p == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(x, 100.0) / 100.0))
        raise ValueError(f"Unknown learning-rate policy {p!r}.")

    def learning_rate(self, iteration: int, total_iterations: int, iterations_per_epoch: float) -> float:
        """The rate for optimizer step `iteration` (0-based) of `total_iterations`."""
        x = 100.0 * iteration / max(total_iterations, 1)
        lr = self.base_lr * self.factor(x)
        warmup = self.warmup_epochs * iterations_per_epoch
        if warmup > 0 and iteration < warmup:
            lr *= (iteration + 1) / warmup
        return lr

    def curve(self, epochs: float, points: int = 200) -> list[tuple[float, float]]:
        """(epoch, lr) pairs for a preview chart, as if training had `points` steps: the
        rate of each step from the first (i = 0) to the last (i = points - 1)."""
        per_epoch = points / epochs
        return [(i / per_epoch, self.learning_rate(i, points, per_epoch)) for i in range(points)]
