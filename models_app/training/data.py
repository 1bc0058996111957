"""Training data: a split's images as uint8 (C, H, W) tensors, in memory when they fit.

A split that fits `cache_bytes` is decoded once into one uint8 tensor and batches are
gathered by indexing it: no per-image Python during training, which is what lets the
system keep up with a plain PyTorch loop over in-memory tensors. Bigger splits stream
from LMDB through DataLoader worker processes.

The order of an epoch is a function of (seed, epoch) alone, so a resumed run can rebuild
the epoch it stopped in and skip the batches it had already used.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from datasets.lmdb_store import meta_shape, open_readonly, read_labels, read_meta, read_record


class RawLmdbImages(torch.utils.data.Dataset):
    """(uint8 C x H x W tensor, label) per record; each loader worker opens LMDB itself."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self.meta = read_meta(Path(path))

    def __len__(self) -> int:
        return int(self.meta["count"])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with open_readonly(self.path).begin() as txn:
            arr, label = read_record(txn, index, self.meta)
        # A copy: the decoded array may be a read-only view of the LMDB page.
        return torch.from_numpy(np.array(arr.transpose(2, 0, 1))), label


class Split:
    """One dataset split for training or validation."""

    def __init__(self, path: Path | str, *, cache_bytes: int, workers: int) -> None:
        self.path = Path(path)
        self.meta = read_meta(self.path) if (self.path / "data.mdb").exists() else {"count": 0}
        self.count = int(self.meta["count"])
        self.workers = workers
        # Loading a split into memory: a raw record is one copy, and loader processes would
        # cost more (their start, sending every batch back) than they save (measured on
        # 15,000 28x28 images: 0.07 s in this process, 0.17 s with 2 workers). Encoded
        # records are decoded in parallel. (Streaming keeps its workers: they read ahead
        # while the device trains.)
        self.preload_workers = workers if self.meta.get("encoding", "png") != "none" else 0
        self.images: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        if self.count:
            height, width, channels = meta_shape(self.meta)
            self.shape = (channels, height, width)
            self.in_memory = self.count * channels * height * width <= cache_bytes
            if self.in_memory:
                self._preload()
            else:
                self.labels = torch.from_numpy(read_labels(self.path).astype("int64"))
        else:
            self.in_memory = True

    def __len__(self) -> int:
        return self.count

    def _preload(self) -> None:
        """Decode every image once, in parallel when there are loader workers."""
        images = torch.empty((self.count, *self.shape), dtype=torch.uint8)
        labels = torch.empty(self.count, dtype=torch.int64)
        loader = DataLoader(RawLmdbImages(self.path), batch_size=1024, num_workers=self.preload_workers)
        start = 0
        for batch, targets in loader:
            images[start : start + len(batch)] = batch
            labels[start : start + len(batch)] = targets
            start += len(batch)
        self.images, self.labels = images, labels

    def move_to(self, device: torch.device, budget_bytes: int) -> bool:
        """Keep an in-memory split on the GPU when it fits `budget_bytes`: batches are then
        gathered there, with no host-to-device copy per step."""
        if not self.in_memory or self.images is None or self.labels is None:
            return False
        if self.images.numel() > budget_bytes:
            return False
        self.images, self.labels = self.images.to(device), self.labels.to(device)
        return True

    def batches(self, index_batches: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images, int64 labels) for each batch of indices, in order."""
        if self.in_memory:
            assert self.images is not None and self.labels is not None
            device = self.images.device
            for idx in index_batches:
                idx = idx.to(device, non_blocking=True)
                yield self.images[idx], self.labels[idx]
            return
        loader = DataLoader(
            RawLmdbImages(self.path),
            batch_sampler=[idx.tolist() for idx in index_batches],
            num_workers=self.workers,
            pin_memory=torch.cuda.is_available(),
        )
        yield from loader


def shard(indices: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's share, padded by repeating the start so every rank gets the same count
    (as DistributedSampler does)."""
    if world_size == 1:
        return indices
    total = math.ceil(len(indices) / world_size) * world_size
    if total > len(indices):
        indices = torch.cat([indices, indices[: total - len(indices)]])
    return indices[rank:total:world_size]


def epoch_order(count: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed((seed * 100_003 + epoch) % 2**64)  # any 64-bit seed
    return torch.randperm(count, generator=generator)


def chunk(indices: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return list(torch.split(indices, batch_size))


def per_rank_count(count: int, world_size: int) -> int:
    return math.ceil(count / world_size)


class Objects:
    """Detection: the boxes of each record of a split, as (boxes (K, 4) float32, labels
    (K,) int64) with the labels counted from 1 (0 is the background for torchvision's
    detectors)."""

    def __init__(self, path: Path | str) -> None:
        with np.load(path) as data:
            boxes, labels, offsets = data["boxes"], data["labels"], data["offsets"]
        self.items = [
            (torch.from_numpy(boxes[offsets[i] : offsets[i + 1]].copy()), torch.from_numpy(labels[offsets[i] : offsets[i + 1]] + 1))
            for i in range(len(offsets) - 1)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, indices: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [self.items[i] for i in indices.tolist()]
