"""ResNet-50 (torchvision). Intended input: 224x224; works from 32x32.

Contract: build(input_shape, num_classes) -> torch.nn.Module, input_shape = (C, H, W).
"""
from __future__ import annotations

import torchvision
from torch import nn

INTENDED_INPUT = (224, 224)
# The smallest side it takes (the model form checks it without importing torch).
MIN_SIDE = 32


def build(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    channels, height, width = input_shape
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"ResNet-50 needs images of at least 32x32 pixels, got {width}x{height}.")
    net = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    if channels != 3:  # grayscale: the first convolution takes one channel
        net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net
