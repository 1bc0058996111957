"""AlexNet (torchvision's single-tower version). Intended input: 224x224 (DIGITS: a 227
crop of 256x256 images).

Contract: build(input_shape, num_classes) -> torch.nn.Module, input_shape = (C, H, W).
"""
from __future__ import annotations

import torchvision
from torch import nn

INTENDED_INPUT = (224, 224)
# The smallest side it takes (the model form checks it without importing torch).
MIN_SIDE = 63


def build(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    channels, height, width = input_shape
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"AlexNet needs images of at least 63x63 pixels, got {width}x{height}.")
    net = torchvision.models.alexnet(weights=None, num_classes=num_classes)
    if channels != 3:  # grayscale: the first convolution takes one channel
        net.features[0] = nn.Conv2d(channels, 64, kernel_size=11, stride=4, padding=2)
    return net
