"""A small U-Net for segmentation: two down and two up stages with skip connections,
about 0.5 M parameters; trains in minutes on a CPU. Intended input: 64x64; any size whose
sides are multiples of 4.

Contract: build(input_shape, num_classes) -> torch.nn.Module returning (N, classes, H, W)
logits, input_shape = (C, H, W). Depends on torch alone (copied into archives).
"""
from __future__ import annotations

import torch
from torch import nn

TASK = "segmentation"
INTENDED_INPUT = (64, 64)
MIN_SIDE = 16
SIDE_FACTOR = 4  # both sides a multiple of this (two 2x poolings)


def _block(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU(inplace=True),
        nn.Conv2d(outputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU(inplace=True),
    )


class SmallUNet(nn.Module):
    def __init__(self, channels: int, num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.down1, self.down2 = _block(channels, width), _block(width, 2 * width)
        self.bottom = _block(2 * width, 4 * width)
        self.pool = nn.MaxPool2d(2)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2), _block(4 * width, 2 * width)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2), _block(2 * width, width)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)
        d2 = self.down2(self.pool(d1))
        b = self.bottom(self.pool(d2))
        u2 = self.dec2(torch.cat([self.up2(b), d2], dim=1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], dim=1))
        return self.head(u1)


def build(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    channels, height, width = input_shape
    if min(height, width) < MIN_SIDE or height % SIDE_FACTOR or width % SIDE_FACTOR:
        raise ValueError(f"The small U-Net needs sides that are multiples of 4, at least 16, got {width}x{height}.")
    return SmallUNet(channels, num_classes)
