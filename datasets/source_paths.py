"""Where each record of a split came from: the image's path in the source (relative to the
source folder when there is one), by the record's index, so a page can say which file an
image is (the mistakes browser, suspect labels) and a user can fix it at its source.

Written by the build beside each split's LMDB: `{split}_paths.jsonl` (one JSON string per
record, in record order; JSON so any file name survives) and `{split}_paths.idx.npy` (the
byte offset of every line), so a lookup reads a few lines, not the whole file."""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np


def paths_files(directory: Path, split: str) -> tuple[Path, Path]:
    return directory / f"{split}_paths.jsonl", directory / f"{split}_paths.idx.npy"


def write_paths(directory: Path, split: str, paths: Iterable[str]) -> list[Path]:
    text, index = paths_files(directory, split)
    offsets = []
    position = 0
    with text.open("wb") as fh:
        for path in paths:
            line = (json.dumps(path, ensure_ascii=False) + "\n").encode()
            offsets.append(position)
            fh.write(line)
            position += len(line)
    with index.open("wb") as fh:
        np.save(fh, np.asarray(offsets, dtype=np.int64))
    return [text, index]


def read_paths(directory: Path, split: str, records: Sequence[int]) -> list[str | None]:
    """The source paths of these record indexes (None where unknown: a dataset built before
    paths were recorded, or an index out of range)."""
    text, index = paths_files(directory, split)
    if not text.exists() or not index.exists():
        return [None] * len(records)
    offsets = np.load(index, mmap_mode="r")
    out: list[str | None] = []
    with text.open("rb") as fh:
        for record in records:
            if not 0 <= record < len(offsets):
                out.append(None)
                continue
            fh.seek(int(offsets[record]))
            out.append(json.loads(fh.readline()))
    return out
