"""FCN ResNet-50 (torchvision), for segmentation. Intended input: 520x520; works from 64x64.
No pretrained weights are downloaded: fine-tune from an uploaded archive instead.

Contract: build(input_shape, num_classes) -> torch.nn.Module returning (N, classes, H, W)
logits, input_shape = (C, H, W). Depends on torch and torchvision alone (copied into
downloaded archives as network.py).
"""
from __future__ import annotations

import torch
import torchvision
from torch import nn

TASK = "segmentation"
INTENDED_INPUT = (520, 520)
MIN_SIDE = 64


class Logits(nn.Module):
    """The logits of torchvision's segmentation model (which returns a dict with "out")."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def _first_conv(net: nn.Module, channels: int) -> None:
    """Make the first convolution take `channels` inputs (1: grayscale)."""
    for parent in net.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                setattr(parent, name, nn.Conv2d(
                    channels, child.out_channels, child.kernel_size,  # type: ignore[arg-type]
                    child.stride, child.padding, bias=child.bias is not None,  # type: ignore[arg-type]
                ))
                return


def build(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    channels, height, width = input_shape
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"FCN ResNet-50 needs images of at least {MIN_SIDE}x{MIN_SIDE} pixels, got {width}x{height}.")
    net = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
    if channels != 3:
        _first_conv(net, channels)
    return Logits(net)
