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
import xxhash

from .imaging import decode

META_KEY = b"__meta__"
LABELS_KEY = b"__labels__"
_LABEL = struct.Struct("<I")


class StoreWriteError(Exception):
    """Writing the database failed (most often: the disk is full)."""


def _key(index: int) -> bytes:
    return b"%010d" % index


def map_size_for(count: int, record_bytes: int) -> int:
    """An LMDB map that holds `count` records of at most `record_bytes` each, with room to
    spare: half-full leaf pages and whole overflow pages. It is address space, not disk:
    the file grows only as records are written."""
    return (64 << 20) + count * (2 * record_bytes + 4096 + 64)


def _open_for_writing(path: Path, map_size: int) -> lmdb.Environment:
    # No sync per commit: the build syncs once at the end, and a killed build leaves only
    # its temporary folder, which the next attempt removes.
    return lmdb.open(
        str(path), map_size=map_size, subdir=True, lock=True, readahead=False, meminit=False, sync=False, metasync=False
    )


class LmdbWriter:
    """The database of one split while it is built.

    Records are written by the build's worker processes themselves (`write_records`), each
    at the key of the image's position in the split, so no pixels pass through the parent;
    the parent opens the database first, then, at `close`, closes the gaps left by images
    that could not be read and writes the meta data and the labels."""

    def __init__(self, path: Path, *, map_size: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.map_size = map_size
        self._lock = threading.Lock()  # `sync` from the flusher thread, `close` from the build
        self._closed = False
        self._tail = (b"", b"")  # the labels and meta data written at `close`
        try:
            self.env = _open_for_writing(path, map_size)
        except lmdb.Error as exc:
            raise StoreWriteError(f"creating {path.name} failed: {exc}") from exc

    def sync(self) -> None:
        """Write what the workers committed so far to the disk (while they go on)."""
        with self._lock:
            if not self._closed:
                try:
                    self.env.sync(True)
                except lmdb.Error:
                    pass  # the final sync at `close` reports it

    def close(self, meta: dict[str, Any], labels: list[int], gaps: list[int], total: int) -> int:
        """Finish the split: `labels` of the records written, in position order; `gaps`
        the positions (of `total`) that hold nothing. Returns the record count."""
        with self._lock:
            return self._close(meta, labels, gaps, total)

    def _close(self, meta: dict[str, Any], labels: list[int], gaps: list[int], total: int) -> int:
        self._closed = True
        try:
            if gaps:
                self._close_gaps(sorted(gaps), total)
            count = total - len(gaps)
            packed = np.asarray(labels, dtype="<u4").tobytes()
            meta_bytes = json.dumps({**meta, "count": count}).encode()
            with self.env.begin(write=True) as txn:
                txn.put(META_KEY, meta_bytes)
                txn.put(LABELS_KEY, packed)
            self._tail = (packed, meta_bytes)
            self.env.sync(True)
            return count
        except lmdb.Error as exc:
            raise StoreWriteError(f"writing {self.path.name} failed: {exc}") from exc
        finally:
            self.env.close()

    def content_digest(self, record_digests: list[bytes]) -> str:
        """After `close`: `content_digest` of this database, from the digests of its
        records in order (what `write_records` returned), without reading it again."""
        return _digest(record_digests, *self._tail)

    def abandon(self) -> None:
        """After a failure: close the environment (closing twice is harmless)."""
        with self._lock:
            self._closed = True
            self.env.close()

    def _close_gaps(self, gaps: list[int], total: int) -> None:
        """Move every record after the first gap down, so the keys are 0..count-1 again.
        Only builds with unreadable images pay for it, from the first one on."""
        skip = set(gaps)
        target = gaps[0]
        with self.env.begin(write=True) as txn:
            for position in range(gaps[0], total):
                if position in skip:
                    continue
                value = txn.get(_key(position))
                assert value is not None, position  # every position is a record or a gap
                txn.put(_key(target), value)
                target += 1
            for position in range(target, total):
                txn.delete(_key(position))


_WRITERS: dict[str, lmdb.Environment] = {}


def record_digest(value: bytes) -> bytes:
    # XXH3-128: a checksum for noticing changed data, not a defence against forgery, at
    # memory speed (blake2b took 8 % of a build of raw 256x256 images; this, 0.1 %).
    return xxhash.xxh3_128_digest(value)


def write_records(path: Path, map_size: int, records: list[tuple[int, int, bytes]]) -> list[bytes]:
    """In a build worker: store (position, label, encoded image) records in one transaction;
    returns each record's digest (for `content_digest`, hashed here, in parallel).
    Each worker keeps its own environment per split (LMDB serialises the writers) until it
    exits; every commit is in the file by then, and the parent syncs it once at the end."""
    values = [_LABEL.pack(label) + data for _, label, data in records]
    try:
        env = _WRITERS.get(str(path))
        if env is None:
            env = _WRITERS[str(path)] = _open_for_writing(path, map_size)
        with env.begin(write=True) as txn:
            txn.cursor().putmulti([(_key(position), value) for (position, _, _), value in zip(records, values)])
    except lmdb.Error as exc:
        raise StoreWriteError(f"writing {path.name} failed: {exc}") from exc
    return [record_digest(value) for value in values]


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


def _digest(record_digests: list[bytes], labels: bytes, meta: bytes) -> str:
    digest = xxhash.xxh3_128()
    digest.update(b"".join(record_digests))
    digest.update(labels)
    digest.update(meta)
    return "xxh3-128:" + digest.hexdigest()


def content_digest(path: Path | str) -> str:
    """A checksum of what a database holds, not of its file (the same images give the same
    digest however the pages were laid out): a digest of the digests of its records in
    key order, then of the labels and the meta data. The build computes it from the
    digests its workers return (`write_records`); this reads the database to check it.
    Datasets built before it have a "blake2b:" digest of every key and value instead."""
    records: list[bytes] = []
    tail = {LABELS_KEY: b"", META_KEY: b""}
    env = lmdb.open(str(path), readonly=True, lock=False, readahead=False)
    try:
        with env.begin() as txn:
            for key, value in txn.cursor():
                if key in tail:
                    tail[key] = bytes(value)
                else:
                    records.append(record_digest(value))
    finally:
        env.close()
    return _digest(records, tail[LABELS_KEY], tail[META_KEY])
