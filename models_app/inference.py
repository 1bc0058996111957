"""Classify images with a snapshot: the same preprocessing as training (datasets.imaging)."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, BinaryIO

import numpy as np
import torch

from datasets.imaging import load_image, resize_image, to_array, to_input

from .models import Snapshot, TrainedModel
from .networks import network_module

_CACHE: OrderedDict[tuple[str, float], torch.nn.Module] = OrderedDict()
_CACHE_SIZE = 4
_LOCK = threading.Lock()


def load_network(snapshot: Snapshot) -> torch.nn.Module:
    """Rebuild the network from a snapshot; a few recent ones stay loaded for the next request."""
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
    with _LOCK:
        _CACHE[key] = net
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return net


def classify_image(model: TrainedModel, snapshot: Snapshot, source: BinaryIO, top_k: int = 5) -> list[dict[str, Any]]:
    """Top-k labels with probabilities for one image. Raises ValueError for a bad image."""
    dataset = model.dataset
    img = resize_image(load_image(source, dataset.channels), dataset.image_width, dataset.image_height, dataset.resize_mode)
    x = torch.from_numpy(to_input(to_array(img), dataset.load_mean()))[None]
    net = load_network(snapshot)
    with torch.no_grad():
        probs = torch.softmax(net(x), dim=1)[0].numpy()
    order = np.argsort(-probs)[: min(top_k, len(probs))]
    return [{"label": dataset.labels[i], "index": int(i), "probability": float(probs[i])} for i in order]
