"""Classify an image with a snapshot, in an inference worker (workers/inference.py; the
task is in models_app/tasks.py), never in the web process: this module imports torch.

The preprocessing is validation's (`training.augment.BatchTransform.eval`: mean
subtraction, centre crop, / 255). Standard networks run in the worker, where a few
recently used snapshots stay loaded; custom networks run in the sandbox child
(models_app/sandbox.py), because no worker executes user code in its own process. Both
answer through `network_views.analyse`.
"""
from __future__ import annotations

import base64
import io
import tempfile
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from datasets.imaging import load_image, resize_image, to_array
from workers import storage

from .models import Network, Snapshot, TrainedModel
from .networks import network_module
from .network_views import analyse
from .training.augment import BatchTransform, TransformSpec

_CACHE: OrderedDict[tuple[str, float], torch.nn.Module] = OrderedDict()
_CACHE_SIZE = 4
_LOCK = threading.Lock()


def load_network(snapshot: Snapshot) -> torch.nn.Module:
    """Rebuild a standard network from a snapshot; a few recent ones stay loaded."""
    path = storage.fetch(snapshot.path)  # from the artifact store, when this host has not got it
    key = (str(path), path.stat().st_mtime)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    net = network_module(checkpoint["network"]).build(tuple(checkpoint["input_shape"]), checkpoint["num_classes"])
    net.load_state_dict(checkpoint["model"])
    net.eval()
    with _LOCK:
        _CACHE[key] = net
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return net


def preprocess(model: TrainedModel, image: bytes) -> tuple[np.ndarray, torch.Tensor]:
    """(the image resized to the dataset's size, HxWxC uint8; the (1, C, H, W) network
    input). Raises ValueError for a file that is not a readable image."""
    dataset = model.dataset
    img = resize_image(
        load_image(io.BytesIO(image), dataset.channels), dataset.image_width, dataset.image_height, dataset.resize_mode
    )
    resized = to_array(img).copy()
    images = torch.from_numpy(resized).permute(2, 0, 1)[None]
    spec = TransformSpec(crop_size=model.crop_size, mean_subtraction=model.mean_subtraction)
    storage.fetch(dataset.mean_path)  # from the artifact store, when this host has not got it
    return resized, BatchTransform(spec, dataset.load_mean(), torch.device("cpu")).eval(images)


def segmentation_views(model: TrainedModel, ids: np.ndarray, confidence: list[float], resized: np.ndarray) -> dict[str, Any]:
    """What a page shows of one image's segmentation: the labels in their classes' colours,
    alone and over the image (as the network saw it: cropped like it), and each class
    found, with its share of the pixels and its mean probability ("predictions", largest
    first)."""
    from datasets.selectors import overlay_labels, palette

    from .network_views import png_uri

    dataset = model.dataset
    colours = palette(dataset.label_colours)
    seen = resized
    if model.crop_size:
        top, left = (resized.shape[0] - model.crop_size) // 2, (resized.shape[1] - model.crop_size) // 2
        seen = resized[top : top + model.crop_size, left : left + model.crop_size]
    coloured = colours[ids]
    counts = np.bincount(ids.reshape(-1), minlength=len(dataset.labels))
    total = max(int(counts.sum()), 1)
    labels = dataset.labels
    found = [i for i in np.argsort(-counts) if counts[i] > 0]
    return {
        "segmentation": {
            "labels": png_uri(coloured),
            "overlay": png_uri(overlay_labels(seen, ids, dataset.label_colours)),
            "legend": [{"label": labels[i], "colour": list(map(int, colours[i]))} for i in range(len(labels))],
        },
        "predictions": [
            {"label": labels[i] if i < len(labels) else str(i), "index": int(i), "probability": float(counts[i] / total),
             "pixels": int(counts[i]), "confidence": float(confidence[i]) if i < len(confidence) else None}
            for i in found
        ],
    }


def detection_views(model: TrainedModel, detections: list[dict[str, Any]], resized: np.ndarray) -> dict[str, Any]:
    """What a page shows of one image's detections: the boxes drawn on the image, and each
    object found (class, score, box in the resized image's pixels), surest first; as
    "predictions", the classes found with their best score."""
    from datasets.selectors import draw_boxes


    labels = model.dataset.labels
    objects = sorted(
        ({"label": labels[d["index"]] if 0 <= d["index"] < len(labels) else str(d["index"]), **d} for d in detections),
        key=lambda d: -d["score"],
    )
    scale = max(1, 256 // max(resized.shape[:2]))
    drawn = draw_boxes(resized, [{**o, "label": f"{o['label']} {o['score']:.0%}"} for o in objects], scale=scale)
    best: dict[int, dict[str, Any]] = {}
    for o in objects:
        best.setdefault(o["index"], o)
    return {
        "detection": {"drawn": "data:image/png;base64," + base64.b64encode(drawn).decode(), "objects": objects},
        "predictions": [{"label": o["label"], "index": o["index"], "probability": o["score"]} for o in best.values()],
    }


# -- one request ----------------------------------------------------------------------------


def _run_custom(model: TrainedModel, snapshot: Snapshot, resized: np.ndarray, x: torch.Tensor, views: bool) -> dict[str, Any]:
    """User code runs in the sandbox child; the preprocessing is done here."""
    from .sandbox import SandboxError, run_sandboxed

    storage.fetch(snapshot.path)  # from the artifact store, when this host has not got it
    model.directory.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(suffix=".npz", dir=model.directory) as tmp:
        np.savez(tmp, x=x.numpy(), resized=resized)
        tmp.flush()
        try:
            reply = run_sandboxed(
                {
                    "task": "classify", "network": "custom", "code": model.custom_code, "input_shape": list(x.shape[1:]),
                    "num_classes": model.dataset.num_classes, "weights": str(snapshot.path), "input": tmp.name,
                    "crop_size": model.crop_size, "views": views, "segmentation": model.dataset.is_segmentation,
                    "detection": model.dataset.is_detection,
                }
            )
        except SandboxError as exc:
            raise ValueError(str(exc)) from exc
    reply.pop("ok", None)
    return reply


def _add_plugin_views(model: TrainedModel, reply: dict[str, Any], resized: np.ndarray) -> None:
    """Installed visualization plugins' views of this output (models_app/view_plugins.py),
    over the image as the network saw it."""
    from .view_plugins import plugin_views

    seen = resized
    if model.crop_size:
        top, left = (resized.shape[0] - model.crop_size) // 2, (resized.shape[1] - model.crop_size) // 2
        seen = resized[top : top + model.crop_size, left : left + model.crop_size]
    output: dict[str, Any] = {k: reply[k] for k in ("probabilities", "label_ids", "confidence", "detections") if k in reply}
    views = plugin_views(model.dataset.task, seen, output, list(model.dataset.labels), list(model.dataset.label_colours))
    if views:
        reply["plugin_views"] = views


def classify(model: TrainedModel, snapshot: Snapshot, image: bytes, *, top_k: int = 5, views: bool = False) -> dict[str, Any]:
    """Top-k labels with probabilities for one image (and, with `views`, what every layer
    did). Raises ValueError for a bad image."""
    started = time.perf_counter()
    resized, x = preprocess(model, image)
    task = model.dataset.task
    if model.network == Network.CUSTOM:
        reply = _run_custom(model, snapshot, resized, x, views)
    else:
        reply = analyse(load_network(snapshot), x, resized, crop_size=model.crop_size, views=views, task=task)
    _add_plugin_views(model, reply, resized)
    if model.dataset.is_segmentation:
        reply.update(segmentation_views(model, np.asarray(reply.pop("label_ids"), dtype=np.uint8), reply.pop("confidence"), resized))
        reply["seconds"] = round(time.perf_counter() - started, 4)
        return reply
    if model.dataset.is_detection:
        reply.update(detection_views(model, reply.pop("detections"), resized))
        reply["seconds"] = round(time.perf_counter() - started, 4)
        return reply
    probabilities = np.asarray(reply.pop("probabilities"))
    labels = model.dataset.labels
    order = np.argsort(-probabilities)[: min(top_k, len(probabilities))]
    reply["predictions"] = [
        {"label": labels[i] if i < len(labels) else str(i), "index": int(i), "probability": float(probabilities[i])}
        for i in order
    ]
    reply["seconds"] = round(time.perf_counter() - started, 4)
    return reply
