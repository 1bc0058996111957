"""The baseline of the evaluation throughput in bench/inference.py: a plain PyTorch
inference loop over a split already in memory, in a fresh process like the evaluation
child, with the same snapshot, preprocessing, batch size and threads.

    python -m bench.plain_eval DB MEAN_NPY SNAPSHOT BATCH    # prints images/s
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch

from models_app.networks import network_module
from models_app.training.augment import BatchTransform, TransformSpec
from models_app.training.data import Split


def plain_eval(db: str, mean_path: str, snapshot: str, batch: int) -> float:
    checkpoint = torch.load(snapshot, map_location="cpu", weights_only=True)
    net = network_module(checkpoint["network"]).build(tuple(checkpoint["input_shape"]), checkpoint["num_classes"])
    net.load_state_dict(checkpoint["model"])
    net.eval()
    split = Split(db, cache_bytes=1 << 40, workers=0)
    assert split.images is not None
    transform = BatchTransform(TransformSpec(), np.load(mean_path), torch.device("cpu"))
    started = time.perf_counter()
    with torch.no_grad():
        for images in split.images.split(batch):
            torch.softmax(net(transform.eval(images)), dim=1).numpy()
    return len(split) / (time.perf_counter() - started)


if __name__ == "__main__":
    db, mean_path, snapshot, batch = sys.argv[1:5]
    print(plain_eval(db, mean_path, snapshot, int(batch)))
