"""FCOS ResNet-50 FPN (torchvision), for object detection. Works from 64x64; no pretrained
weights are downloaded (fine-tune from an uploaded archive instead).

Contract: build(input_shape, num_classes) -> a torchvision detection model: in training
mode it takes (images, targets) and returns its losses; in eval mode a list of
{boxes, labels, scores} per image. num_classes counts the object classes; labels are
1..num_classes (0 is the background). Depends on torch and torchvision alone.
"""
from __future__ import annotations

import torchvision
from torch import nn

TASK = "detection"
INTENDED_INPUT = (512, 512)
MIN_SIDE = 64


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
        raise ValueError(f"FCOS ResNet-50 FPN needs images of at least {MIN_SIDE}x{MIN_SIDE} pixels, got {width}x{height}.")
    # Images arrive at the dataset's size, normalised: no resizing or normalising inside.
    net = torchvision.models.detection.fcos_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes + 1,
        min_size=min(height, width), max_size=max(height, width), image_mean=[0.0] * channels, image_std=[1.0] * channels,
    )
    if channels != 3:
        _first_conv(net, channels)
    return net
