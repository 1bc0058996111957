"""Data transforms, applied to whole batches on the training device.

Images travel from the dataset as uint8 (N, C, H, W) and become network input here: the
random draws are per image, but every operation is one vectorised call on the batch, so
a GPU does the work and a CPU does it with its threads instead of per-image Python.

Training, in this order: HSV jitter (colour only) -> mean subtraction -> rotation and
scale jitter (one affine resample; uncovered corners become the mean, i.e. 0) -> random
crop -> flips -> quarter turns -> / 255. Validation and inference: mean subtraction ->
centre crop -> / 255. Mean subtraction before cropping uses the mean image at the crop's
own position, as Caffe did.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .spec import TrainSpec

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

# RGB <-> YIQ: a hue shift is a rotation of the (I, Q) plane.
_RGB_TO_YIQ_NP = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_RGB_TO_YIQ = torch.from_numpy(_RGB_TO_YIQ_NP.astype(np.float32))
_YIQ_TO_RGB = torch.from_numpy(np.linalg.inv(_RGB_TO_YIQ_NP).astype(np.float32))
_LUMA = torch.from_numpy(np.array([0.299, 0.587, 0.114], dtype=np.float32))


@dataclass(frozen=True)
class TransformSpec:
    crop_size: int | None = None
    mean_subtraction: str = "image"  # none | image | pixel
    flip: str = "none"  # none | h | v | hv
    rotate90: bool = False
    rotation: float = 0.0  # max degrees either way
    scale_jitter: float = 0.0  # max zoom fraction either way
    hsv_jitter: float = 0.0  # max hue (fraction of a turn), saturation and value change

    @classmethod
    def from_spec(cls, spec: TrainSpec) -> TransformSpec:
        return cls(
            crop_size=spec.crop_size or None,
            mean_subtraction=spec.mean_subtraction,
            flip=spec.flip,
            rotate90=spec.rotate90,
            rotation=spec.rotation,
            scale_jitter=spec.scale_jitter,
            hsv_jitter=spec.hsv_jitter,
        )

    def output_shape(self, channels: int, height: int, width: int) -> tuple[int, int, int]:
        if self.crop_size:
            return channels, self.crop_size, self.crop_size
        return channels, height, width


def mean_tensor(mean_image: np.ndarray | None, mode: str) -> torch.Tensor | None:
    """The mean to subtract, (C, H, W) for "image" or (C, 1, 1) for "pixel"."""
    if mode == "none" or mean_image is None:
        return None
    mean = torch.from_numpy(np.ascontiguousarray(mean_image.astype(np.float32).transpose(2, 0, 1)))
    return mean.mean(dim=(1, 2), keepdim=True) if mode == "pixel" else mean


def centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    height, width = x.shape[-2:]
    top, left = (height - size) // 2, (width - size) // 2
    return x[..., top : top + size, left : left + size]


def crop_offsets(x: torch.Tensor, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's random window: (top, left), on the CPU."""
    batch, _, height, width = x.shape
    top = torch.randint(0, height - size + 1, (batch,), generator=generator)
    left = torch.randint(0, width - size + 1, (batch,), generator=generator)
    return top, left


def random_crop(x: torch.Tensor, size: int, generator: torch.Generator,
                offsets: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """A different window per image (or at `offsets`), gathered in one indexing operation."""
    batch, channels, height, width = x.shape
    top, left = (t.to(x.device) for t in (offsets or crop_offsets(x, size, generator)))
    steps = torch.arange(size, device=x.device)
    rows = (top[:, None] + steps)[:, None, :, None]
    cols = (left[:, None] + steps)[:, None, None, :]
    return x[torch.arange(batch, device=x.device)[:, None, None, None], torch.arange(channels, device=x.device)[None, :, None, None], rows, cols]


def random_flip(x: torch.Tensor, dim: int, generator: torch.Generator) -> torch.Tensor:
    mask = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(mask[:, None, None, None], x.flip(dim), x)


def random_rot90(x: torch.Tensor, generator: torch.Generator, turns: torch.Tensor | None = None) -> torch.Tensor:
    turns = (turns if turns is not None else torch.randint(0, 4, (x.shape[0],), generator=generator)).to(x.device)
    out = x.clone()
    for k in (1, 2, 3):
        chosen = turns == k
        if chosen.any():
            out[chosen] = torch.rot90(x[chosen], k, dims=(-2, -1))
    return out


def affine_theta(batch: int, max_degrees: float, max_scale: float, generator: torch.Generator) -> torch.Tensor:
    """(N, 2, 3): for each image a random rotation and zoom, as affine_grid's matrix (from
    an output position to the input position it samples, in -1..1 coordinates)."""
    angle = (torch.rand(batch, generator=generator) * 2 - 1) * math.radians(max_degrees)
    # Zoom in by `scale`: sample a window 1/scale as large.
    scale = 1.0 + (torch.rand(batch, generator=generator) * 2 - 1) * max_scale
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    return theta


def random_affine(
    x: torch.Tensor, max_degrees: float, max_scale: float, generator: torch.Generator, labels: torch.Tensor | None = None,
    theta: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotate and zoom each image by a random amount (or by `theta`'s); `labels` (N, H, W
    class ids) move with their image, sampled nearest (no class blended into another),
    IGNORE outside."""
    if theta is None:
        theta = affine_theta(x.shape[0], max_degrees, max_scale, generator)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if labels is None:
        return out, None
    # Shifted by one so that 0 marks "outside the image" after zero padding.
    moved = F.grid_sample((labels[:, None].to(x.dtype) + 1), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    moved = moved[:, 0].round().long() - 1
    return out, torch.where(moved < 0, torch.full_like(moved, IGNORE_INDEX), moved)


def random_hsv(x: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    """x: float RGB in 0..255. Value scales brightness, saturation blends with the grey
    level, hue rotates the chroma plane; each by a per-image random amount."""
    batch = x.shape[0]
    value = 1.0 + (torch.rand(batch, generator=generator) * 2 - 1) * amount
    saturation = 1.0 + (torch.rand(batch, generator=generator) * 2 - 1) * amount
    hue = (torch.rand(batch, generator=generator) * 2 - 1) * amount * 2 * math.pi
    cos, sin = torch.cos(hue), torch.sin(hue)
    rotation = torch.zeros(batch, 3, 3)
    rotation[:, 0, 0] = 1.0
    rotation[:, 1, 1], rotation[:, 1, 2], rotation[:, 2, 1], rotation[:, 2, 2] = cos, -sin, sin, cos
    matrix = (_YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ).to(x.device, x.dtype)
    x = torch.einsum("bij,bjhw->bihw", matrix, x)
    grey = torch.einsum("c,bchw->bhw", _LUMA.to(x.device, x.dtype), x)[:, None]
    x = grey + saturation.to(x.device, x.dtype)[:, None, None, None] * (x - grey)
    x = x * value.to(x.device, x.dtype)[:, None, None, None]
    return x.clamp_(0.0, 255.0)


# Detection: a box keeps its object after a crop or a zoom when at least this share of it
# is still inside the image.
KEEP_VISIBLE = 0.3


def _move_corners(boxes: torch.Tensor, move: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The boxes around each box's four corners after `move` ((K, 4, 2) -> (K, 4, 2))."""
    if not len(boxes):
        return boxes
    corners = torch.stack([boxes[:, [0, 1]], boxes[:, [2, 1]], boxes[:, [0, 3]], boxes[:, [2, 3]]], dim=1)
    moved = move(corners)
    return torch.cat([moved.min(dim=1).values, moved.max(dim=1).values], dim=1)


def _through(points: torch.Tensor, matrix: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pixel positions (edges: 0..width) through a 3x3 matrix of -1..1 coordinates."""
    size = torch.tensor([width, height], dtype=points.dtype)
    normal = points / size * 2 - 1
    moved = normal @ matrix[:2, :2].T + matrix[:2, 2]
    return (moved + 1) / 2 * size


def _turn(points: torch.Tensor, turns: int, size: int) -> torch.Tensor:
    for _ in range(turns):
        points = torch.stack([points[..., 1], size - points[..., 0]], dim=-1)
    return points


# Label pixels that count for nothing (datasets.imaging.IGNORE_LABEL; not imported: this
# file is copied into downloaded archives, which carry no datasets package).
IGNORE_INDEX = 255


class BatchTransform:
    def __init__(self, spec: TransformSpec, mean_image: np.ndarray | None, device: torch.device, seed: int = 0) -> None:
        self.spec = spec
        self.device = device
        mean = mean_tensor(mean_image, spec.mean_subtraction)
        self.mean = mean.to(device) if mean is not None else None
        # Random draws come from this CPU generator, whatever the device: the same seed
        # gives the same augmentation on CPU and GPU, and its state goes into snapshots.
        self.generator = torch.Generator().manual_seed(seed)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device, non_blocking=True).float()

    def _subtract_mean(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.mean if self.mean is not None else x

    def train(self, images: torch.Tensor) -> torch.Tensor:
        s, g = self.spec, self.generator
        x = self._colour(images)
        if s.rotation or s.scale_jitter:
            x, _ = random_affine(x, s.rotation, s.scale_jitter, g)
        return self._geometry(x).div_(255.0)

    def _colour(self, images: torch.Tensor) -> torch.Tensor:
        """Float images with colour jitter and the mean subtracted."""
        x = self._prepare(images)
        if self.spec.hsv_jitter and x.shape[1] == 3:
            x = random_hsv(x, self.spec.hsv_jitter, self.generator)
        return self._subtract_mean(x)

    def _geometry(self, x: torch.Tensor) -> torch.Tensor:
        """Random crop, flips and quarter turns, drawn in this order (a run's augmentation
        depends on it: resumed runs repeat it exactly)."""
        s, g = self.spec, self.generator
        if s.crop_size:
            x = random_crop(x, s.crop_size, g)
        if s.flip in ("h", "hv"):
            x = random_flip(x, -1, g)
        if s.flip in ("v", "hv"):
            x = random_flip(x, -2, g)
        if s.rotate90 and x.shape[-1] == x.shape[-2]:
            x = random_rot90(x, g)
        return x

    def train_pair(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Segmentation: the training transform of `train`, with every geometric step
        (rotation and zoom, crop, flips, quarter turns) applied to the label images too.
        labels: (N, H, W) class ids."""
        s, g = self.spec, self.generator
        x = self._colour(images)
        y = labels.to(self.device, non_blocking=True).long()
        if s.rotation or s.scale_jitter:
            x, moved = random_affine(x, s.rotation, s.scale_jitter, g, y)
            assert moved is not None
            y = moved
        # The label image as one more channel: crops, flips and turns index both alike.
        both = self._geometry(torch.cat([x, y[:, None].to(x.dtype)], dim=1))
        return both[:, :-1].div(255.0), both[:, -1].round().long()

    def train_boxes(
        self, images: torch.Tensor, targets: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """Detection: the training transform of `train` (colour jitter, mean subtraction,
        rotation and zoom, random crop, flips, quarter turns, drawn in the same order),
        each image's boxes ((K, 4) left, top, right, bottom) moved with it: the box around
        a box's moved corners, clipped to the image. A box less than `KEEP_VISIBLE` inside
        the image after its move is dropped (its object is mostly cut away)."""
        s, g = self.spec, self.generator
        x = self._colour(images)
        boxes = [b.to(torch.float32).cpu() for b, _ in targets]
        if s.rotation or s.scale_jitter:
            theta = affine_theta(x.shape[0], s.rotation, s.scale_jitter, g)
            x, _ = random_affine(x, s.rotation, s.scale_jitter, g, theta=theta)
            height, width = x.shape[-2:]
            # affine_grid's matrix maps output to input positions: boxes move by its inverse.
            inverse = torch.linalg.inv(torch.cat([theta, torch.tensor([[[0.0, 0.0, 1.0]]]).expand(len(theta), 1, 3)], dim=1))
            boxes = [_move_corners(b, partial(_through, matrix=m, width=width, height=height)) for b, m in zip(boxes, inverse)]
        if s.crop_size:
            top, left = crop_offsets(x, s.crop_size, g)
            x = random_crop(x, s.crop_size, g, (top, left))
            boxes = [b - torch.tensor([l, t, l, t], dtype=b.dtype) for b, t, l in zip(boxes, top.tolist(), left.tolist())]
        height, width = x.shape[-2:]
        for axis, wanted in ((-1, ("h", "hv")), (-2, ("v", "hv"))):
            if s.flip not in wanted:
                continue
            flip = torch.rand(x.shape[0], generator=g) < 0.5
            x = torch.where(flip[:, None, None, None].to(x.device), x.flip(axis), x)
            for i in flip.nonzero().flatten().tolist():
                b = boxes[i]
                if axis == -1:
                    boxes[i] = torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], dim=1)
                else:
                    boxes[i] = torch.stack([b[:, 0], height - b[:, 3], b[:, 2], height - b[:, 1]], dim=1)
        if s.rotate90 and height == width:
            turns = torch.randint(0, 4, (x.shape[0],), generator=g)
            x = random_rot90(x, g, turns)
            # torch.rot90 by one turn takes the pixel at (row r, column c) to (size - 1 - c, r):
            # a position (x, y) goes to (y, size - x).
            boxes = [_move_corners(b, partial(_turn, turns=int(k), size=width)) for b, k in zip(boxes, turns)]
        if not (s.rotation or s.scale_jitter or s.crop_size or s.rotate90):
            # Flips alone keep every box inside the image, whole: nothing to clip or drop
            # (and this is the common case, per image per step).
            return x.div_(255.0), [{"boxes": b.to(self.device), "labels": t[1].to(self.device)} for b, t in zip(boxes, targets)]
        out = []
        for b, (_, labels) in zip(boxes, targets):
            area = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
            clipped = torch.stack([b[:, 0].clamp(0, width), b[:, 1].clamp(0, height), b[:, 2].clamp(0, width),
                                   b[:, 3].clamp(0, height)], dim=1)
            w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
            keep = (w >= 1) & (h >= 1) & (w * h >= KEEP_VISIBLE * area)
            out.append({"boxes": clipped[keep].to(self.device), "labels": labels[keep].to(self.device)})
        return x.div_(255.0), out

    def eval_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Segmentation: the label images as `eval` crops their images."""
        y = labels.to(self.device, non_blocking=True).long()
        if self.spec.crop_size:
            y = centre_crop(y[:, None], self.spec.crop_size)[:, 0]
        return y

    def eval(self, images: torch.Tensor) -> torch.Tensor:
        x = self._subtract_mean(self._prepare(images))
        if self.spec.crop_size:
            x = centre_crop(x, self.spec.crop_size)
        return x.div_(255.0)
