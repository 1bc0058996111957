"""The outline of each predicted region, in its class's colour, over the image: a DIGITS-NG
visualization plugin for segmentation models (where the built-in view fills the regions,
this one leaves the image visible inside them, as a radiologist reads a contour)."""
from __future__ import annotations

from typing import Any

import numpy as np

from models_app.view_plugins import VisualizationPlugin


class MaskOutline(VisualizationPlugin):
    name = "mask-outline"
    label = "Outlines of the predicted regions"
    tasks = ("segmentation",)

    def render(self, image: np.ndarray, output: dict[str, Any], labels: list[str], colours: list[list[int]]) -> np.ndarray:
        from PIL import Image

        ids = np.asarray(output["label_ids"], dtype=np.int64)
        base = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image.copy()
        # A pixel is on an outline when a neighbour (right or below) belongs to another class;
        # the background's own outline is not drawn.
        edge = np.zeros(ids.shape, dtype=bool)
        edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
        edge[:-1, :] |= ids[:-1, :] != ids[1:, :]
        scale = max(1, 256 // max(ids.shape))
        big = np.asarray(Image.fromarray(base).resize((ids.shape[1] * scale, ids.shape[0] * scale), Image.Resampling.NEAREST)).copy()
        for cls in np.unique(ids):
            if cls == 0:
                continue
            region = ids == cls
            outline = edge & (region | np.roll(region, -1, 1) | np.roll(region, -1, 0))
            colour = colours[int(cls)] if int(cls) < len(colours) else [255, 255, 0]
            ys, xs = np.nonzero(np.kron(outline, np.ones((scale, scale), dtype=bool)))
            big[ys, xs] = colour
        return big
