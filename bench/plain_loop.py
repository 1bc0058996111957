"""The baseline of bench/training.py: a plain hand-written PyTorch training loop over
in-memory tensors, run as its own fresh process like the training child, so both pay
the same start-up (e.g. oneDNN's first-call costs) inside their measured loops.

    python -m bench.plain_loop TRAIN_DB MEAN_NPY NETWORK EPOCHS BATCH LR   # prints images/s

bench/training.py runs it with the training child's environment (CHILD_ENV) too.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from models_app.networks import build_network
from models_app.training.data import Split


def plain_loop(network: str, train_db: Path, mean: np.ndarray, epochs: int, batch: int, lr: float, seed: int = 0) -> float:
    """images/s of the loop alone (data already normalised in memory)."""
    torch.set_flush_denormal(True)  # as the training child does on the CPU
    split = Split(train_db, cache_bytes=1 << 40, workers=0)
    assert split.images is not None and split.labels is not None
    mean_t = torch.from_numpy(mean.astype(np.float32).transpose(2, 0, 1))
    images = (split.images.float() - mean_t) / 255.0
    labels = split.labels
    torch.manual_seed(seed)
    net = build_network(network, "", tuple(images.shape[1:]), int(labels.max()) + 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()
    net.train()
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(labels), generator=generator).split(batch):
            loss = criterion(net(images[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return epochs * len(labels) / (time.perf_counter() - start)


if __name__ == "__main__":
    train_db, mean_path, network, epochs, batch, lr = sys.argv[1:7]
    print(plain_loop(network, Path(train_db), np.load(mean_path), int(epochs), int(batch), float(lr)))
