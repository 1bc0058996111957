"""The baseline of bench/tasks.py: plain torchvision-style training loops for segmentation
and detection over in-memory tensors, run as their own fresh process like the training
child (see bench/plain_loop.py for classification).

    python -m bench.plain_tasks segmentation TRAIN_DB LABELS_DB MEAN_NPY NETWORK CLASSES EPOCHS BATCH LR
    python -m bench.plain_tasks detection TRAIN_DB OBJECTS_NPZ MEAN_NPY NETWORK CLASSES EPOCHS BATCH LR
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from models_app.networks import build_network
from models_app.training.data import Objects, Split


def run(task: str, train_db: Path, targets: Path, mean: np.ndarray, network: str, classes: int, epochs: int, batch: int,
        lr: float) -> float:
    """images/s of the loop alone (data already normalised in memory)."""
    torch.set_flush_denormal(True)  # as the training child does on the CPU
    split = Split(train_db, cache_bytes=1 << 40, workers=0)
    assert split.images is not None
    images = (split.images.float() - torch.from_numpy(mean.astype(np.float32).transpose(2, 0, 1))) / 255.0
    torch.manual_seed(0)
    net = build_network(network, "", tuple(images.shape[1:]), classes)  # type: ignore[arg-type]
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    generator = torch.Generator().manual_seed(0)
    if task == "segmentation":
        labels = Split(targets, cache_bytes=1 << 40, workers=0).images
        assert labels is not None
        labels = labels[:, 0].long()
        criterion = torch.nn.CrossEntropyLoss(ignore_index=255)
    else:
        objects = Objects(targets)
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(images), generator=generator).split(batch):
            if task == "segmentation":
                loss = criterion(net(images[idx]), labels[idx])
            else:
                found = [{"boxes": b, "labels": c} for b, c in objects.batch(idx)]
                loss = sum(net(list(images[idx]), found).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return epochs * len(images) / (time.perf_counter() - start)


if __name__ == "__main__":
    task, train_db, targets, mean_path, network, classes, epochs, batch, lr = sys.argv[1:10]
    print(run(task, Path(train_db), Path(targets), np.load(mean_path), network, int(classes), int(epochs), int(batch), float(lr)))
