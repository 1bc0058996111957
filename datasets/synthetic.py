"""Synthetic shapes for detection and segmentation: rectangles, circles and triangles of
several colours on noisy backgrounds, with their labels in every format the dataset kinds
read. For tests, the benchmarks and a first try without data of one's own:

    python manage.py synthetic_shapes data/images/shapes --count 300 --size 96

writes, for each image `images/NNNNN.png`:
  - `labels/NNNNN.txt`: KITTI object labels (DIGITS' detection format: one line per
    object, `type truncated occluded alpha left top right bottom h w l x y z rotation_y`),
  - `masks/NNNNN.png`: the class id of every pixel (0: background), as a palette PNG
    whose colours are those of `classes.txt`,
and, for all of them, `annotations.json` (COCO: images, annotations with boxes and
polygons, categories) and `classes.txt` (`name r g b` per class id, background first).

Shapes do not overlap (each box is apart from the others by a margin), so every object is
fully visible and the mask and boxes agree exactly. Depends on NumPy and Pillow only.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("background", "rectangle", "circle", "triangle")
# Each class's colour in the masks' palette (and in the class list).
CLASS_COLOURS = ((0, 0, 0), (220, 20, 60), (30, 144, 255), (50, 205, 50))
# Fill colours of the shapes themselves: every class comes in each of them.
SHAPE_COLOURS = ((230, 60, 40), (40, 90, 230), (240, 200, 30), (160, 60, 200), (30, 180, 120), (250, 250, 250))


@dataclass(frozen=True)
class Shape:
    kind: str  # one of CLASSES[1:]
    box: tuple[int, int, int, int]  # left, top, right, bottom (pixels, right/bottom exclusive)
    polygon: list[tuple[float, float]]  # its outline (for COCO)


def _polygon(kind: str, box: tuple[int, int, int, int]) -> list[tuple[float, float]]:
    left, top, right, bottom = box
    if kind == "rectangle":
        return [(left, top), (right - 1, top), (right - 1, bottom - 1), (left, bottom - 1)]
    if kind == "triangle":
        return [((left + right - 1) / 2, top), (right - 1, bottom - 1), (left, bottom - 1)]
    cx, cy, r = (left + right - 1) / 2, (top + bottom - 1) / 2, (right - left - 1) / 2
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 24, endpoint=False)]


def draw_image(size: int, rng: np.random.Generator, max_shapes: int = 3) -> tuple[Image.Image, np.ndarray, list[Shape]]:
    """One image (RGB), its mask (HxW uint8 class ids) and its shapes."""
    background = rng.integers(60, 140, size=3)
    noise = rng.normal(0, 18, size=(size, size, 3))
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    mask = Image.new("L", (size, size), 0)
    draw, draw_mask = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    shapes: list[Shape] = []
    smallest, largest = max(6, size // 8), max(8, size // 3)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        for _attempt in range(30):
            side = int(rng.integers(smallest, largest + 1))
            width = side if rng.random() < 0.5 else int(rng.integers(smallest, largest + 1))
            kind = CLASSES[int(rng.integers(1, len(CLASSES)))]
            if kind == "circle":
                width = side
            left, top = int(rng.integers(0, size - width + 1)), int(rng.integers(0, size - side + 1))
            box = (left, top, left + width, top + side)
            margin = 2
            if all(box[2] + margin <= s.box[0] or s.box[2] + margin <= box[0] or box[3] + margin <= s.box[1]
                   or s.box[3] + margin <= box[1] for s in shapes):
                break
        else:
            continue  # no room left
        colour = SHAPE_COLOURS[int(rng.integers(0, len(SHAPE_COLOURS)))]
        polygon = _polygon(kind, box)
        class_id = CLASSES.index(kind)
        corners = [box[0], box[1], box[2] - 1, box[3] - 1]
        if kind == "circle":
            draw.ellipse(corners, fill=colour)
            draw_mask.ellipse(corners, fill=class_id)
        else:
            draw.polygon(polygon, fill=colour)
            draw_mask.polygon(polygon, fill=class_id)
        shapes.append(Shape(kind, box, polygon))
    return image, np.asarray(mask, dtype=np.uint8), shapes


def kitti_line(shape: Shape) -> str:
    """DIGITS' KITTI label line: the class, then (truncated, occluded, alpha), the box, and
    the 3D fields a 2D detector ignores."""
    left, top, right, bottom = shape.box
    return f"{shape.kind} 0.00 0 0.00 {left:.2f} {top:.2f} {right - 1:.2f} {bottom - 1:.2f} 0.00 0.00 0.00 0.00 0.00 0.00 0.00"


def palette_mask(mask: np.ndarray) -> Image.Image:
    image = Image.fromarray(mask, "P")
    flat = [c for colour in CLASS_COLOURS for c in colour]
    image.putpalette(flat + [0] * (768 - len(flat)))
    return image


def write_shapes(out: Path, count: int, size: int = 64, seed: int = 0, max_shapes: int = 3) -> dict[str, int]:
    """Write `count` images and their labels under `out` (see the module docstring).
    Returns how many objects of each class were drawn."""
    rng = np.random.default_rng(seed)
    for folder in ("images", "labels", "masks"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    coco: dict[str, list] = {
        "images": [], "annotations": [],
        "categories": [{"id": i, "name": name} for i, name in enumerate(CLASSES) if i],
    }
    objects = dict.fromkeys(CLASSES[1:], 0)
    for index in range(count):
        name = f"{index:05d}"
        image, mask, shapes = draw_image(size, rng, max_shapes)
        image.save(out / "images" / f"{name}.png")
        palette_mask(mask).save(out / "masks" / f"{name}.png")
        (out / "labels" / f"{name}.txt").write_text("".join(kitti_line(s) + "\n" for s in shapes))
        coco["images"].append({"id": index + 1, "file_name": f"images/{name}.png", "width": size, "height": size})
        for shape in shapes:
            left, top, right, bottom = shape.box
            objects[shape.kind] += 1
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": index + 1, "category_id": CLASSES.index(shape.kind),
                "bbox": [left, top, right - left, bottom - top], "area": int((mask[top:bottom, left:right] > 0).sum()),
                "iscrowd": 0, "segmentation": [[round(v, 2) for point in shape.polygon for v in point]],
            })
    (out / "annotations.json").write_text(json.dumps(coco))
    (out / "classes.txt").write_text("".join(f"{n} {r} {g} {b}\n" for n, (r, g, b) in zip(CLASSES, CLASS_COLOURS)))
    return objects
