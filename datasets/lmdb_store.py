"""The LMDB layout of a dataset split, its writer, and the PyTorch Dataset over it.

Layout: keys b"%010d" -> 4-byte little-endian label + encoded image; b"__meta__" -> JSON
with count, width, height, channels, encoding. Readers open it read-only and lock-free so
any number of DataLoader workers and web requests can share it.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

from .imaging import decode, to_input

META_KEY = b"__meta__"
_LABEL = struct.Struct("<I")


def _key(index: int) -> bytes:
    return b"%010d" % index


class LmdbWriter:
    """Append-only writer with large transactions and a map that grows when full
    (so nothing reserves a terabyte of address space up front)."""

    def __init__(self, path: Path, *, commit_every: int = 2000, initial_map: int = 64 << 20) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(path), map_size=initial_map, subdir=True, lock=True, readahead=False, meminit=False)
        self.commit_every = commit_every
        self.count = 0
        self._pending: list[tuple[bytes, bytes]] = []

    def add(self, label: int, encoded: bytes) -> None:
        self._pending.append((_key(self.count), _LABEL.pack(label) + encoded))
        self.count += 1
        if len(self._pending) >= self.commit_every:
            self.flush()

    def _put_all(self, items: list[tuple[bytes, bytes]]) -> None:
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value in items:
                        txn.put(key, value)
                return
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def flush(self) -> None:
        if self._pending:
            self._put_all(self._pending)
            self._pending = []

    def close(self, meta: dict[str, Any]) -> None:
        self.flush()
        self._put_all([(META_KEY, json.dumps({**meta, "count": self.count}).encode())])
        self.env.sync()
        self.env.close()


def read_meta(path: Path) -> dict[str, Any]:
    env = lmdb.open(str(path), readonly=True, lock=False, readahead=False)
    try:
        with env.begin() as txn:
            raw = txn.get(META_KEY)
        return json.loads(raw) if raw else {"count": 0}
    finally:
        env.close()


def read_record(txn: lmdb.Transaction, index: int) -> tuple[np.ndarray, int]:
    value = txn.get(_key(index))
    if value is None:
        raise IndexError(index)
    (label,) = _LABEL.unpack_from(value)
    return decode(value[_LABEL.size :]), label


class LmdbImageDataset:
    """A map-style PyTorch Dataset: (CxHxW float tensor, label). The LMDB environment is
    opened lazily in each process, because an open environment must not cross a fork."""

    def __init__(self, path: Path | str, mean: np.ndarray | None = None) -> None:
        self.path = str(path)
        self.mean = mean
        self.meta = read_meta(Path(path))
        self._env: lmdb.Environment | None = None

    def __len__(self) -> int:
        return int(self.meta["count"])

    def __getitem__(self, index: int):  # noqa: ANN204 - returns (torch.Tensor, int)
        import torch  # here, so the dataset builder never pays for importing torch

        if self._env is None:
            self._env = lmdb.open(self.path, readonly=True, lock=False, readahead=False)
        with self._env.begin() as txn:
            arr, label = read_record(txn, index)
        return torch.from_numpy(to_input(arr, self.mean)), label

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_env": None}

