"""Generated, learnable image sets for tests and benchmarks (no downloads)."""
from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

SHAPE_COLORS = {"circle": (220, 40, 40), "square": (40, 180, 40), "triangle": (40, 60, 220)}


def shape_image(kind: str, rng: random.Random, size: int = 32) -> Image.Image:
    """A coloured shape at a random place and size on a noisy light background."""
    bg = tuple(rng.randint(200, 255) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    r = rng.randint(size // 5, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    base = SHAPE_COLORS[kind]
    color = tuple(max(0, min(255, c + rng.randint(-30, 30))) for c in base)
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
    elif kind == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=color)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    return img


def make_shapes_folder(root: Path, per_class: int = 100, classes: tuple[str, ...] = tuple(SHAPE_COLORS), seed: int = 0, size: int = 32) -> Path:
    rng = random.Random(seed)
    for kind in classes:
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape_image(kind, rng, size).save(folder / f"{kind}_{i:04d}.png")
    return root
