"""A small FCOS detector: a few convolutions as the backbone (features at strides 4 and
8), torchvision's anchor-free FCOS head; about 0.6 M parameters, trains in minutes on a
CPU. Intended input: 64x64.

Contract: build(input_shape, num_classes) -> a torchvision detection model: in training
mode it takes (images, targets) and returns its losses; in eval mode a list of
{boxes, labels, scores} per image. num_classes counts the object classes; labels are
1..num_classes (0 is the background). Depends on torch and torchvision alone.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator

TASK = "detection"
INTENDED_INPUT = (64, 64)
MIN_SIDE = 32


def _conv(inputs: int, outputs: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False), nn.GroupNorm(8, outputs), nn.ReLU(inplace=True))


class TinyBackbone(nn.Module):
    """Feature maps at strides 4 and 8, 64 channels each."""

    out_channels = 64

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv(channels, 32, 2), _conv(32, 32), _conv(32, 64, 2), _conv(64, 64))
        self.down = nn.Sequential(_conv(64, 128, 2), _conv(128, 128))
        self.lateral = nn.Conv2d(128, 64, 1)
        self.smooth = _conv(64, 64)
        # He initialisation (as torchvision's ResNets): with PyTorch's default, some seeds
        # leave the features too weak for the head to ever find the objects.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        fine = self.stem(x)
        coarse = self.lateral(self.down(fine))
        fine = self.smooth(fine + nn.functional.interpolate(coarse, size=fine.shape[-2:], mode="nearest"))
        return OrderedDict([("0", fine), ("1", coarse)])


def build(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    channels, height, width = input_shape
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"The small FCOS needs images of at least {MIN_SIDE}x{MIN_SIDE} pixels, got {width}x{height}.")
    anchors = AnchorGenerator(sizes=((8,), (16,)), aspect_ratios=((1.0,), (1.0,)))
    # Images arrive at the dataset's size, normalised: no resizing or normalising inside.
    return FCOS(
        TinyBackbone(channels), num_classes + 1, min_size=min(height, width), max_size=max(height, width),
        image_mean=[0.0] * channels, image_std=[1.0] * channels, anchor_generator=anchors,
        score_thresh=0.05, detections_per_img=50, topk_candidates=200,
    )
