"""Classify images with a snapshot: the same preprocessing as validation in training
(`training.augment.BatchTransform.eval`: mean subtraction, centre crop, / 255).

Standard networks run here; custom networks run in the sandbox child, because the web
process never executes user code."""
from __future__ import annotations

import tempfile
import threading
from collections import OrderedDict
from typing import Any, BinaryIO

import numpy as np
import torch

from datasets.imaging import load_image, resize_image, to_array

from .models import Network, Snapshot, TrainedModel
from .networks import network_module
from .training.augment import BatchTransform, TransformSpec

_CACHE: OrderedDict[tuple[str, float], tuple[torch.nn.Module, dict[str, Any]]] = OrderedDict()
_CACHE_SIZE = 4
_LOCK = threading.Lock()


def _checkpoint_info(checkpoint: dict[str, Any]) -> dict[str, Any]:
    return {k: checkpoint.get(k) for k in ("network", "input_shape", "num_classes", "crop_size", "mean_subtraction")}


def load_network(snapshot: Snapshot) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a standard network from a snapshot; a few recent ones stay loaded."""
    path = snapshot.path
    key = (str(path), path.stat().st_mtime)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    net = network_module(checkpoint["network"]).build(tuple(checkpoint["input_shape"]), checkpoint["num_classes"])
    net.load_state_dict(checkpoint["model"])
    net.eval()
    entry = (net, _checkpoint_info(checkpoint))
    with _LOCK:
        _CACHE[key] = entry
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return entry


def preprocess(model: TrainedModel, source: BinaryIO) -> torch.Tensor:
    """One image as a (1, C, H, W) network input. Raises ValueError for a bad image."""
    dataset = model.dataset
    img = resize_image(load_image(source, dataset.channels), dataset.image_width, dataset.image_height, dataset.resize_mode)
    images = torch.from_numpy(to_array(img).copy()).permute(2, 0, 1)[None]
    spec = TransformSpec(crop_size=model.crop_size, mean_subtraction=model.mean_subtraction)
    return BatchTransform(spec, dataset.load_mean(), torch.device("cpu")).eval(images)


def _probabilities(model: TrainedModel, snapshot: Snapshot, x: torch.Tensor) -> np.ndarray:
    if model.network != Network.CUSTOM:
        net, _ = load_network(snapshot)
        with torch.no_grad():
            return torch.softmax(net(x), dim=1)[0].numpy()
    from .sandbox import SandboxError, run_sandboxed

    with tempfile.NamedTemporaryFile(suffix=".npy", dir=model.directory) as tmp:
        np.save(tmp, x.numpy())
        tmp.flush()
        try:
            reply = run_sandboxed(
                {
                    "task": "classify", "network": "custom", "code": model.custom_code, "input_shape": list(x.shape[1:]),
                    "num_classes": model.dataset.num_classes, "weights": str(snapshot.path), "input": tmp.name,
                }
            )
        except SandboxError as exc:
            raise ValueError(str(exc)) from exc
    return np.asarray(reply["probabilities"])


def classify_image(model: TrainedModel, snapshot: Snapshot, source: BinaryIO, top_k: int = 5) -> list[dict[str, Any]]:
    """Top-k labels with probabilities for one image. Raises ValueError for a bad image."""
    probs = _probabilities(model, snapshot, preprocess(model, source))
    order = np.argsort(-probs)[: min(top_k, len(probs))]
    return [{"label": model.dataset.labels[i], "index": int(i), "probability": float(probs[i])} for i in order]
