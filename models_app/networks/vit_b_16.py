"""ViT-B/16 (torchvision Vision Transformer, 16x16 patches). Intended input: 224x224; any
square size that is a multiple of 16 works.

Contract: build(input_shape, num_classes) -> torch.nn.Module, input_shape = (C, H, W).
"""
from __future__ import annotations

import torchvision
from torch import nn

INTENDED_INPUT = (224, 224)
# Square inputs whose side is a multiple of the patch size (checked by the form too).
SIDE_MULTIPLE = 16


def build(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    channels, height, width = input_shape
    if height != width or height % SIDE_MULTIPLE:
        raise ValueError(f"ViT-B/16 needs square images whose side is a multiple of 16 (like 224x224), got {width}x{height}.")
    net = torchvision.models.vit_b_16(weights=None, num_classes=num_classes, image_size=height)
    if channels != 3:  # grayscale: the patch embedding takes one channel
        net.conv_proj = nn.Conv2d(channels, net.hidden_dim, kernel_size=16, stride=16)
    return net
