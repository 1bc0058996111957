"""Where each record of a split came from: the image's path in the source (relative to the
source folder when there is one), by the record's index, so a page can say which file an
image is (the mistakes browser, suspect labels) and a user can fix it at its source.

Written by the build beside each split's LMDB: `{split}_paths.jsonl` (one JSON string per
record, in record order; JSON so any file name survives) and `{split}_paths.idx.npy` (the
byte offset of every line), so a lookup reads a few lines, not the whole file."""
from __future__ import annotations

import json
from json.encoder import encode_basestring
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np


def paths_files(directory: Path, split: str) -> tuple[Path, Path]:
    return directory / f"{split}_paths.jsonl", directory / f"{split}_paths.idx.npy"


def path_lines(paths: Iterable[str]) -> list[bytes]:
    """The file's line of each path: one JSON string, as json.dumps(path, ensure_ascii=False)
    writes it (made with string work: a build makes a line per image)."""
    return [_utf8(encode_basestring(path) + "\n") for path in paths]


def write_lines(directory: Path, split: str, lines: list[bytes]) -> list[Path]:
    """Write a split's paths file and its index from the lines of `path_lines`, in record order."""
    text, index = paths_files(directory, split)
    offsets = np.zeros(len(lines), dtype=np.int64)
    if lines:
        np.cumsum(np.fromiter(map(len, lines[:-1]), dtype=np.int64, count=len(lines) - 1), out=offsets[1:])
    with text.open("wb") as fh:
        fh.write(b"".join(lines))
    with index.open("wb") as fh:
        np.save(fh, offsets)
    return [text, index]


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:  # a file name with bytes that are not UTF-8: shown as U+FFFD
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace").encode()


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
