"""The LMDB layout of a dataset split, its writer, and the PyTorch Dataset over it.

Layout: keys b"%010d" -> 4-byte little-endian label + encoded image (raw, PNG or JPEG);
b"__meta__" -> JSON with count, width, height, channels, encoding; b"__labels__" -> the
labels of all records as little-endian uint32 (so the gallery can filter by class without
reading images). Readers open it read-only and lock-free so any number of DataLoader
workers and web requests can share it.
"""
from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

from .imaging import decode

META_KEY = b"__meta__"
LABELS_KEY = b"__labels__"
_LABEL = struct.Struct("<I")


class StoreWriteError(Exception):
    """Writing the database failed (most often: the disk is full)."""


def _key(index: int) -> bytes:
    return b"%010d" % index


class LmdbWriter:
    """Append-only writer with large transactions and a map that grows when full
    (so nothing reserves a terabyte of address space up front)."""

    def __init__(self, path: Path, *, commit_bytes: int = 32 << 20, initial_map: int = 64 << 20) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.env = lmdb.open(str(path), map_size=initial_map, subdir=True, lock=True, readahead=False, meminit=False)
        self.commit_bytes = commit_bytes
        self.count = 0
        self.labels: list[int] = []
        self._pending: list[tuple[bytes, bytes]] = []
        self._pending_bytes = 0

    def add(self, label: int, encoded: bytes) -> None:
        value = _LABEL.pack(label) + encoded
        self._pending.append((_key(self.count), value))
        self._pending_bytes += len(value)
        self.labels.append(label)
        self.count += 1
        # One transaction per ~32 MiB: few fsyncs, and memory stays bounded.
        if self._pending_bytes >= self.commit_bytes:
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
            except lmdb.Error as exc:
                raise StoreWriteError(f"writing {self.path.name} failed: {exc}") from exc

    def flush(self) -> None:
        if self._pending:
            self._put_all(self._pending)
            self._pending = []
            self._pending_bytes = 0

    def close(self, meta: dict[str, Any]) -> None:
        self.flush()
        labels = np.asarray(self.labels, dtype="<u4").tobytes()
        self._put_all([(META_KEY, json.dumps({**meta, "count": self.count}).encode()), (LABELS_KEY, labels)])
        try:
            self.env.sync(True)
        except lmdb.Error as exc:
            raise StoreWriteError(f"writing {self.path.name} failed: {exc}") from exc
        finally:
            self.env.close()


_ENVS: dict[tuple[int, str], lmdb.Environment] = {}
_ENVS_LOCK = threading.Lock()


def open_readonly(path: Path | str) -> lmdb.Environment:
    """A shared read-only environment per process. LMDB refuses to open one environment
    twice in a process, and web requests and DataLoader workers read concurrently; the
    key includes the pid because an environment must not be used across a fork."""
    key = (os.getpid(), str(path))
    with _ENVS_LOCK:
        env = _ENVS.get(key)
        if env is None:
            # An environment inherited through fork is unusable here, and LMDB would refuse
            # a second one for the same path: close the inherited one first.
            for other in [k for k in _ENVS if k[1] == key[1]]:
                _ENVS.pop(other).close()
            env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, max_readers=256)
            _ENVS[key] = env
        return env


def forget(path: Path | str) -> None:
    """Close this process's environment for `path` (before its files are deleted)."""
    with _ENVS_LOCK:
        env = _ENVS.pop((os.getpid(), str(path)), None)
    if env is not None:
        env.close()


def read_meta(path: Path) -> dict[str, Any]:
    with open_readonly(path).begin() as txn:
        raw = txn.get(META_KEY)
    return json.loads(raw) if raw else {"count": 0}


def read_labels(path: Path) -> np.ndarray:
    """The label of every record, in key order."""
    with open_readonly(path).begin() as txn:
        raw = txn.get(LABELS_KEY)
    return np.frombuffer(raw, dtype="<u4").copy() if raw else np.zeros(0, dtype="<u4")


def meta_shape(meta: dict[str, Any]) -> tuple[int, int, int]:
    return int(meta["height"]), int(meta["width"]), int(meta["channels"])


def read_raw(txn: lmdb.Transaction, index: int) -> tuple[bytes, int]:
    """The stored (encoded) bytes of one record and its label."""
    value = txn.get(_key(index))
    if value is None:
        raise IndexError(index)
    (label,) = _LABEL.unpack_from(value)
    return bytes(value[_LABEL.size :]), label


def read_record(txn: lmdb.Transaction, index: int, meta: dict[str, Any]) -> tuple[np.ndarray, int]:
    data, label = read_raw(txn, index)
    return decode(data, meta.get("encoding", "png"), meta_shape(meta)), label
