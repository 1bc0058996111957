"""LeNet as in DIGITS/Caffe: conv20-pool-conv50-pool-fc500-relu-fc. Intended input: 28x28.

The contract every network module follows (standard or custom):

    build(input_shape: tuple[int, int, int], num_classes: int) -> torch.nn.Module

where input_shape is (channels, height, width). This file depends on torch alone: it is
copied into downloaded model archives as network.py.
"""
from __future__ import annotations

import torch
from torch import nn

INTENDED_INPUT = (28, 28)
# The smallest side it takes (the model form checks it without importing torch).
MIN_SIDE = 16


class LeNet(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 20, kernel_size=5),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(20, 50, kernel_size=5),
            nn.MaxPool2d(2, 2),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, channels, height, width)).numel()
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, 500), nn.ReLU(inplace=True), nn.Linear(500, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    if min(input_shape[1:]) < MIN_SIDE:
        raise ValueError(f"LeNet needs images of at least 16x16 pixels, got {input_shape[2]}x{input_shape[1]}.")
    return LeNet(tuple(input_shape), num_classes)  # type: ignore[arg-type]
