"""Visualization plugins: views of a model's output for one input, from installed packages
(DIGITS' view extensions), shown on the Classify one image page and in its API reply.

A package declares an entry point in the group `digits.visualization_plugins` naming a
subclass of `VisualizationPlugin`: its `name` (the entry point's), `label`, the `tasks` it
applies to, and `render(image, output, labels, colours)`, which returns an HxWx3 uint8
picture (shown as an image) or a short text (shown as text, escaped). `image` is the input
as the network saw it (HxWxC uint8); `output` is the model's raw answer: classification
{"probabilities": [...]}, segmentation {"label_ids": HxW, "confidence": [...]}, detection
{"detections": [{"box", "index", "score"}, ...]}. It runs in the inference worker; a plugin
that raises shows its error in its place, the other views stay. Plugins that fail to load
are listed on the plugins page (datasets/plugins.py discovers both kinds alike).
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from datasets.plugins import Discovered, discovered

GROUP = "digits.visualization_plugins"


class VisualizationPlugin:
    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    tasks: ClassVar[tuple[str, ...]] = ("classification", "segmentation", "detection")

    def render(self, image: np.ndarray, output: dict[str, Any], labels: list[str], colours: list[list[int]]) -> np.ndarray | str:
        raise NotImplementedError


def view_plugins(refresh: bool = False) -> Discovered:
    """The installed visualization plugins and those that failed to load."""
    return discovered(GROUP, VisualizationPlugin, refresh)


def plugin_views(task: str, image: np.ndarray, output: dict[str, Any], labels: list[str], colours: list[list[int]]) -> list[dict[str, Any]]:
    """Every installed view for this task: {"plugin", "label", and "image" (a PNG data URI)
    or "text" or "error"}."""
    from .network_views import png_uri

    views = []
    for name, plugin in view_plugins().plugins.items():
        if task not in plugin.tasks:
            continue
        view: dict[str, Any] = {"plugin": name, "label": plugin.label}
        try:
            rendered = plugin().render(image, output, labels, colours)
            if isinstance(rendered, str):
                view["text"] = rendered[:5000]  # escaped where it is shown
            else:
                picture = np.asarray(rendered)
                if picture.dtype != np.uint8 or picture.ndim != 3 or picture.shape[2] not in (1, 3, 4):
                    raise ValueError(f"it returned a {picture.dtype} array of shape {list(picture.shape)}, not HxWx3 uint8")
                view["image"] = png_uri(picture)
        except Exception as exc:  # noqa: BLE001 - one plugin's failure, shown in its place
            view["error"] = f"{type(exc).__name__}: {exc}"[:500]
        views.append(view)
    return views


def installed_plugins() -> dict[str, Any]:
    """Every plugin found (data and visualization) and every one that failed to load."""
    from dataclasses import asdict

    from datasets.plugins import GROUP as DATA_GROUP
    from datasets.plugins import data_plugins

    data, views = data_plugins(), view_plugins()
    return {
        "data": [{"name": n, "label": c.label, "task": c.task, "fields": [asdict(f) for f in c.fields]}
                 for n, c in data.plugins.items()],
        "views": [{"name": n, "label": c.label, "tasks": list(c.tasks)} for n, c in views.plugins.items()],
        "failures": [{"group": DATA_GROUP, **f} for f in data.failures] + [{"group": GROUP, **f} for f in views.failures],
    }
