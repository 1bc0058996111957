"""GoogLeNet (Inception v1, torchvision), without the auxiliary heads. Intended input: 224x224.

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
        raise ValueError(f"GoogLeNet needs images of at least 32x32 pixels, got {width}x{height}.")
    net = torchvision.models.googlenet(weights=None, num_classes=num_classes, aux_logits=False, init_weights=True)
    if channels != 3:  # grayscale: the first convolution takes one channel
        net.conv1.conv = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net
