"""Build an image dataset: gather, split, resize, encode into LMDB, mean image.

Classification: a label per image (class subfolders, text lists, an archive).
Segmentation: a label image per image (class ids, a palette, or colours of the class
list), resized with the same geometry (nearest neighbour, padding "ignored") and stored
in a database of its own per split (`<split>_labels_db`, aligned with `<split>_db`), with
per-class pixel counts instead of image counts.

Runs as a child process of a Celery worker (or by hand):

    python -m datasets.build --spec /path/to/spec.json

It prints JSON lines on stdout (progress, result, error) and writes everything into
`<output_dir>/build.tmp` first, moving the finished files into place only at the end, so
a failed or killed build never leaves half-written databases behind.

Speed: decoding, resizing and encoding run in worker processes, one per core, forked
once with the whole list of images; each takes the next chunk of consecutive images by
number from a shared counter, writes it into the split's LMDB itself, at the keys of the
images' positions, and sends back through its own pipe only the labels, the files it
could not read, a digest of each record and the sum of its pixels for the mean image. No
pixels or file names pass between processes and the parent has no threads shuffling
tasks: on a few cores, the parent's share of the CPU is what the workers lose (measured:
0.46-0.84 of cores x the single-core rate with the parent writing, 0.67 with a
multiprocessing.Pool sending each chunk's file names, on 2 cores). Chunks get smaller
towards the end, so the workers finish together. Memory stays bounded whatever the
dataset size: a worker holds one chunk, and blocks on its pipe if the parent lags.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import random
import shutil
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from multiprocessing.connection import Connection, wait
from typing import Any, cast

import numpy as np
from PIL import Image

from workers import protocol
from workers.procs import keep_freed_memory

from .imaging import IGNORE_LABEL, IMAGE_EXTENSIONS, encode, load_image, load_mask, resize_boxes, resize_image, to_array
from .lmdb_store import LmdbWriter, StoreWriteError, map_size_for, write_records
from .sources import (
    Skip, SourceError, extract_archive, pair_label_files, pair_label_images, parse_kitti, parse_list, read_class_list,
    read_coco, read_labels_file, scan_folder,
)
from .spec import BuildSpec
from .source_paths import path_lines, paths_files, write_lines
from .splits import SPLITS, Splits, cap_per_class, drop_small_classes, split_stratified

FLUSH_SECONDS = 0.25  # often: the final sync, while every core waits, is then short
OUTPUTS = (
    "train_db", "val_db", "test_db", "labels.txt", "mean.npy", "mean.png",
    "train_labels_db", "val_labels_db", "test_labels_db", "train_objects.npz", "val_objects.npz", "test_objects.npz",
    *(name.name for split in ("train", "val", "test") for name in paths_files(Path(), split)),
)


class BuildError(Exception):
    pass


def emit(event: protocol.Event) -> None:
    """One event for the worker (workers/protocol.py), flushed at once."""
    protocol.emit(event)
    sys.stdout.flush()


@dataclass
class Gathered:
    labels: list[str]
    splits: Splits
    root: Path | None  # skipped paths are reported relative to this
    skipped: list[Skip] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)
    requested: tuple[str, ...] = ("train", "val")  # splits that get a database
    # Segmentation: each item's label image (aligned with `splits`), the classes' colours.
    label_images: dict[str, list[str]] = field(default_factory=dict)
    colours: list[tuple[int, int, int]] = field(default_factory=list)
    # Detection: each item's objects (class index, left, top, right, bottom), aligned.
    objects: dict[str, list[list[tuple[Any, ...]]]] = field(default_factory=dict)
    # What reports call an item, where its file's path would say nothing (a plugin's entries).
    names: dict[str, str] = field(default_factory=dict)


def _gather_folders(spec: BuildSpec, root: Path) -> Gathered:
    labels, items, skipped = scan_folder(root)
    if len(labels) < 2:
        raise BuildError(
            f"{root.name or root} has {len(labels)} class subfolder(s) with images; "
            "a classification dataset needs at least two."
        )
    seed = spec.seed
    val_folder, test_folder = spec.val_folder, spec.test_folder
    val_percent, test_percent = spec.val_percent, spec.test_percent
    # A split with a folder of its own comes from that folder; one without comes from the
    # training folder by its percentage (as DIGITS did): a separate validation folder with
    # a test percentage still gets a test split, and the other way round.
    if val_folder:
        val_percent = 0.0
    if test_folder:
        test_percent = 0.0
    splits = split_stratified(items, val_percent, test_percent, seed)
    rng = random.Random(seed)
    for split, folder in (("val", val_folder), ("test", test_folder)):
        if folder:
            _, extra, extra_skipped = scan_folder(Path(folder), labels)
            rng.shuffle(extra)
            splits[split] = extra
            skipped += [{**s, "path": f"[{split}] {s['path']}"} for s in extra_skipped]
    requested = ("train", "val") + (("test",) if test_folder or test_percent > 0 else ())
    return Gathered(labels, splits, root, skipped, requested=requested)


def _gather_s3(spec: BuildSpec, workdir: Path) -> Gathered:
    """Class subfolders under S3 prefixes: listed, fetched in parallel into the build's
    folder (at their keys' paths, so every report names the key), then gathered as a
    folder source. The endpoint going away or a refused credential fails the build (the
    build folder goes with it); an object that vanished is reported and left out."""
    from . import s3

    store = s3.Store(
        spec.s3_endpoint, os.environ.get("DIGITS_S3_ACCESS_KEY_ID", ""), os.environ.get("DIGITS_S3_SECRET_ACCESS_KEY", ""),
        spec.s3_region, spec.s3_connect_timeout, spec.s3_read_timeout,
    )
    emit(protocol.Progress(progress=0.0, phase="listing"))
    root = workdir / "source"
    listed: dict[str, dict[str, list[tuple[str, int]]]] = {}
    skipped: list[Skip] = []
    for split, prefix in (("train", spec.s3_prefix), ("val", spec.s3_val_prefix), ("test", spec.s3_test_prefix)):
        if split == "train" or prefix:
            try:
                listed[split], left_out = s3.class_objects(store, spec.s3_bucket, prefix)
            except s3.S3Error as exc:
                raise BuildError(str(exc)) from exc
            skipped += [Skip(**item) for item in left_out]
            if not listed[split]:
                raise BuildError(f"No images in class subfolders under s3://{spec.s3_bucket}/{s3.normal_prefix(prefix)}.")
    keys = [item for classes in listed.values() for items in classes.values() for item in items]
    total_bytes = sum(size for _, size in keys)
    if total_bytes > spec.max_extract_bytes:
        raise BuildError(f"The {len(keys)} images under these prefixes add up to {total_bytes / 2**30:.1f} GiB; the server "
                         f"fetches at most {spec.max_extract_bytes / 2**30:.1f} GiB for a build (DIGITS_MAX_ARCHIVE_EXTRACT_BYTES).")
    started, last = time.monotonic(), [0.0]

    def progress(done: int, count: int) -> None:
        now = time.monotonic()
        if done == count or now - last[0] > 0.5:
            last[0] = now
            rate = done / max(now - started, 1e-6)
            emit(protocol.Progress(progress=done / count, eta=(count - done) / rate if rate else None,
                                   phase=f"fetching {done}/{count} objects ({total_bytes >> 20} MiB)"))

    try:
        vanished = s3.download(store, spec.s3_bucket, keys, root, threads=spec.s3_threads, progress=progress)
    except s3.S3Error as exc:
        raise BuildError(f"{exc} (while fetching {len(keys)} objects from s3://{spec.s3_bucket}/)") from exc
    folders = {split: str(root / s3.normal_prefix(prefix)) for split, prefix in
               (("train", spec.s3_prefix), ("val", spec.s3_val_prefix), ("test", spec.s3_test_prefix)) if split in listed}
    local = BuildSpec.from_dict({**spec.to_dict(), "source": "folder", "folder": folders["train"],
                                 "val_folder": folders.get("val", ""), "test_folder": folders.get("test", "")})
    gathered = _gather_folders(local, Path(folders["train"]))
    # Reports name each object by its key (its path under the download folder).
    gathered.skipped = skipped + [Skip(path=v["path"], reason=v["reason"]) for v in vanished] + [
        {**item, "path": s3.normal_prefix(spec.s3_prefix) + item["path"]} if not item["path"].startswith("[") else item
        for item in gathered.skipped
    ]
    gathered.root = root
    return gathered


_PLUGIN: Any = None  # the data plugin of this build, in each process of the pool


def _plugin_init(name: str, options: dict[str, Any]) -> None:
    from .plugins import data_plugin

    global _PLUGIN
    _PLUGIN = data_plugin(name)(options)


def _plugin_entry(job: tuple[int, Any, str]) -> tuple[int, str, str, str]:
    """Entry `index` loaded by the plugin and written as PNG (its label image too):
    (index, image file, label: a class index or the label image's file, why not: "")."""
    index, entry, root = job
    try:
        pixels, label = _PLUGIN.load(entry)
        pixels = np.asarray(pixels)
        if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
            raise ValueError(f"the plugin gave a {pixels.dtype} array of {pixels.ndim} dimensions, not an HxW(xC) uint8 image")
        image = Path(root) / "images" / f"{index:07d}.png"
        Image.fromarray(pixels[:, :, 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels).save(image)
        if isinstance(label, np.ndarray):
            if label.shape != pixels.shape[:2]:
                raise ValueError(f"its label image is {label.shape[1]}x{label.shape[0]}, its image {pixels.shape[1]}x{pixels.shape[0]}")
            mask = Path(root) / "masks" / f"{index:07d}.png"
            Image.fromarray(label.astype(np.uint8), "L").save(mask)
            return index, str(image), str(mask), ""
        return index, str(image), str(int(label)), ""
    except Exception as exc:  # noqa: BLE001 - one entry's problem, reported with its name
        return index, "", "", f"the plugin could not load it ({type(exc).__name__}: {exc})"


def _gather_plugin(spec: BuildSpec, workdir: Path) -> Gathered:
    """A data plugin's entries (datasets/plugins.py), loaded in parallel by the plugin in
    every process and written as PNG files, then split and built as a folder source."""
    from concurrent.futures import ProcessPoolExecutor

    from .plugins import data_plugin
    from .sources import default_colour

    try:
        plugin = data_plugin(spec.plugin)(spec.plugin_options)
        labels = list(plugin.labels())
        entries = list(plugin.entries())
        colours = [(int(c[0]), int(c[1]), int(c[2])) for c in plugin.colours()] or [default_colour(i) for i in range(len(labels))]
    except Exception as exc:  # noqa: BLE001 - the plugin's own failure, said with its name
        raise BuildError(f"The {spec.plugin} plugin failed: {type(exc).__name__}: {exc}") from exc
    if not entries:
        raise BuildError(f"The {spec.plugin} plugin found nothing to build from with these options.")
    root = workdir / "plugin"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    names = {str(root / "images" / f"{i:07d}.png"): plugin.describe(e) for i, e in enumerate(entries)}
    results: list[tuple[int, str, str, str]] = []
    skipped: list[Skip] = []
    emit(protocol.Progress(progress=0.0, phase=f"loading {len(entries)} entries with the {spec.plugin} plugin"))
    started = last = time.monotonic()
    processes = max(1, spec.workers or os.cpu_count() or 1)
    with ProcessPoolExecutor(processes, mp_context=mp.get_context("fork"), initializer=_plugin_init,
                             initargs=(spec.plugin, spec.plugin_options)) as pool:
        for done, result in enumerate(pool.map(_plugin_entry, [(i, e, str(root)) for i, e in enumerate(entries)],
                                               chunksize=16), 1):
            results.append(result)
            if result[3]:
                skipped.append({"path": plugin.describe(entries[result[0]]), "reason": result[3]})
            now = time.monotonic()
            if now - last > 0.5:
                last = now
                rate = done / (now - started)
                emit(protocol.Progress(progress=done / len(entries), eta=(len(entries) - done) / rate,
                                       phase=f"loading entries with the {spec.plugin} plugin"))
    loaded = [r for r in results if not r[3]]
    if spec.task == "segmentation":
        parts = _random_split(len(loaded), spec)
        splits: Splits = {split: [(loaded[i][1], 0) for i in parts[split]] for split in SPLITS}
        label_images = {split: [loaded[i][2] for i in parts[split]] for split in SPLITS}
        requested = ("train", "val") + (("test",) if spec.test_percent > 0 else ())
        gathered = Gathered(labels, splits, None, skipped, requested=requested, label_images=label_images, colours=colours)
    else:
        bad = [r for r in loaded if not 0 <= int(r[2]) < len(labels)]
        skipped += [{"path": names[r[1]], "reason": f"label {r[2]} is not a class (0-{len(labels) - 1})"} for r in bad]
        items = [(r[1], int(r[2])) for r in loaded if 0 <= int(r[2]) < len(labels)]
        splits = split_stratified(items, spec.val_percent, spec.test_percent, spec.seed)
        requested = ("train", "val") + (("test",) if spec.test_percent > 0 else ())
        gathered = Gathered(labels, splits, None, skipped, requested=requested)
    gathered.names = names
    return gathered


def _gather_lists(spec: BuildSpec) -> Gathered:
    roots = [Path(r) for r in spec.data_roots]
    try:
        labels = read_labels_file(Path(spec.labels_file))
    except SourceError as exc:
        raise BuildError(str(exc)) from exc
    image_folder = Path(spec.image_folder) if spec.image_folder else None
    splits: Splits = {split: [] for split in SPLITS}
    skipped: list[Skip] = []
    requested = []
    for split in SPLITS:
        list_path = {"train": spec.train_list, "val": spec.val_list, "test": spec.test_list}[split]
        if not list_path:
            continue
        requested.append(split)
        try:
            splits[split], bad = parse_list(Path(list_path), len(labels), image_folder, roots)
        except SourceError as exc:
            raise BuildError(str(exc)) from exc
        skipped += bad
    if spec.shuffle:
        rng = random.Random(spec.seed)
        for split_items in splits.values():
            rng.shuffle(split_items)
    if "val" not in requested:
        requested.insert(1, "val")
    return Gathered(labels, splits, image_folder, skipped, requested=tuple(requested))


def _from_archive(spec: BuildSpec, workdir: Path) -> tuple[BuildSpec, list[Skip]]:
    """A segmentation or detection dataset uploaded as an archive, extracted: the spec
    with its folders. The layout: images/; masks/ (segmentation: label images), or labels/
    (detection: KITTI .txt files) or annotations.json (detection: COCO, its file names
    under the archive's top or under images/); classes.txt (the class list: needed for
    segmentation unless given on the server, optional for detection)."""
    emit(protocol.Progress(progress=0.0, phase="extracting"))
    root, skipped = extract_archive(Path(spec.archive), workdir / "source", spec.max_extract_bytes)
    layout = "images/, masks/ and classes.txt" if spec.task == "segmentation" else "images/ with labels/ (KITTI) or annotations.json (COCO)"
    if not (root / "images").is_dir():
        raise BuildError(f"The archive has no images/ folder: a {spec.task} archive holds {layout}.")
    fields: dict[str, Any] = {"source": "folder", "folder": str(root / "images")}
    classes = root / "classes.txt"
    if not spec.class_list and classes.is_file():
        fields["class_list"] = str(classes)
    if spec.task == "segmentation":
        masks = next((root / name for name in ("masks", "labels") if (root / name).is_dir()), None)
        if masks is None:
            raise BuildError(f"The archive has no masks/ folder of label images: a segmentation archive holds {layout}.")
        fields["label_folder"] = str(masks)
        if "class_list" not in fields and not spec.class_list:
            raise BuildError("The archive has no classes.txt (line i: the name of class i, optionally `r g b`): add it, "
                             "or give a class list on the server.")
    elif (root / "annotations.json").is_file():
        fields["annotations_file"] = str(root / "annotations.json")
        fields["folder"] = str(root)  # COCO file names are taken under the archive's top (or images/)
    elif (root / "labels").is_dir():
        fields["label_folder"] = str(root / "labels")
    else:
        raise BuildError(f"The archive has neither labels/ nor annotations.json: a detection archive holds {layout}.")
    return replace(spec, **fields), skipped


def _gather_segmentation(spec: BuildSpec) -> Gathered:
    """Images paired with their label images, split at random by the percentages."""
    if spec.source != "folder":
        raise BuildError("A segmentation dataset is made from two server folders (images and label images).")
    names, colours = read_class_list(Path(spec.class_list))
    pairs, skipped = pair_label_images(Path(spec.folder), Path(spec.label_folder))
    parts = _random_split(len(pairs), spec)
    splits: Splits = {split: [(pairs[i][0], 0) for i in parts[split]] for split in SPLITS}
    label_images = {split: [pairs[i][1] for i in parts[split]] for split in SPLITS}
    requested = ("train", "val") + (("test",) if spec.test_percent > 0 else ())
    return Gathered(names, splits, Path(spec.folder), skipped, requested=requested, label_images=label_images, colours=colours)


def _random_split(count: int, spec: BuildSpec) -> dict[str, list[int]]:
    """Positions of `count` items per split, at random by the spec's percentages."""
    order = list(range(count))
    random.Random(spec.seed).shuffle(order)
    n_val = round(count * spec.val_percent / 100)
    n_test = round(count * spec.test_percent / 100)
    if n_val + n_test >= count and order:
        raise BuildError(
            f"{count} usable image(s) leave none for training with {spec.val_percent:g}% for validation "
            f"and {spec.test_percent:g}% for test; lower the percentages or add images."
        )
    return {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}


def _gather_detection(spec: BuildSpec) -> Gathered:
    """Images with their boxes: KITTI label files of the same names, or a COCO file."""
    if spec.source != "folder":
        raise BuildError("A detection dataset is made from a server folder of images with label files or a COCO file.")
    images = Path(spec.folder)
    skipped: list[Skip] = []
    named: list[tuple[str, list[tuple[str, float, float, float, float]]]] = []
    if spec.annotations_file:
        names, found, skipped = read_coco(Path(spec.annotations_file), images)
        named = [(path, [(names[c], *box) for c, *box in objects]) for path, objects in found]  # type: ignore[misc]
    else:
        pairs, skipped = pair_label_files(images, Path(spec.label_folder))
        for image, label_file in pairs:
            try:
                named.append((image, parse_kitti(label_file) if label_file else []))
            except ValueError as exc:
                skipped.append({"path": os.path.relpath(label_file, spec.label_folder), "reason": str(exc)})
        names = sorted({name for _, objects in named for name, *_ in objects})
    if spec.class_list:
        names, _ = read_class_list(Path(spec.class_list), at_least=1)
        left_out = Counter(name for _, objects in named for name, *_ in objects if name not in names)
        skipped += [{"path": f"[class {name!r}]", "reason": f"{n} object(s) of a class not in the class list, left out"}
                    for name, n in sorted(left_out.items())]
    if not names:
        raise BuildError("No object was found in the labels: check the label folder (KITTI .txt files) or the COCO file.")
    index = {name: i for i, name in enumerate(names)}
    objects = [[(index[name], *box) for name, *box in objs if name in index] for _, objs in named]
    parts = _random_split(len(named), spec)
    splits: Splits = {split: [(named[i][0], 0) for i in parts[split]] for split in SPLITS}
    boxes = {split: [objects[i] for i in parts[split]] for split in SPLITS}
    requested = ("train", "val") + (("test",) if spec.test_percent > 0 else ())
    return Gathered(names, splits, images, skipped, requested=requested, objects=boxes)


def gather(spec: BuildSpec, workdir: Path) -> Gathered:
    """Collect (path, label) items per split from the spec's source and apply the rules."""
    source = spec.source
    if spec.source == "plugin" and spec.task == "segmentation":
        try:
            return _gather_plugin(spec, workdir)
        except SourceError as exc:
            raise BuildError(str(exc)) from exc
    if spec.task in ("segmentation", "detection"):
        try:
            extracted: list[Skip] = []
            if spec.source == "upload":
                spec, extracted = _from_archive(spec, workdir)
            gathered = _gather_segmentation(spec) if spec.task == "segmentation" else _gather_detection(spec)
        except SourceError as exc:
            raise BuildError(str(exc)) from exc
        gathered.skipped = extracted + gathered.skipped
        return gathered
    try:
        if source == "folder":
            gathered = _gather_folders(spec, Path(spec.folder))
        elif source == "upload":
            emit(protocol.Progress(progress=0.0, phase="extracting"))
            root, skipped = extract_archive(
                Path(spec.archive),
                workdir / "source",
                spec.max_extract_bytes,
            )
            gathered = _gather_folders(spec, root)
            gathered.skipped = skipped + gathered.skipped
        elif source == "textfile":
            gathered = _gather_lists(spec)
        elif source == "s3":
            gathered = _gather_s3(spec, workdir)
        elif source == "plugin":
            gathered = _gather_plugin(spec, workdir)
        else:
            raise BuildError(f"Unknown source {source!r}.")
    except SourceError as exc:
        raise BuildError(str(exc)) from exc
    min_per_class = spec.min_per_class
    if min_per_class > 1:
        gathered.labels, gathered.splits, gathered.dropped = drop_small_classes(
            gathered.labels, gathered.splits, min_per_class
        )
    max_per_class = spec.max_per_class
    if max_per_class > 0:
        gathered.splits = cap_per_class(gathered.splits, max_per_class)
    return gathered


@dataclass(frozen=True)
class Chunk:
    """A run of consecutive images of one split for one worker."""

    split: str
    db: str  # the split's database
    map_size: int
    seed_offset: int  # distinct noise seeds per split
    items: list[tuple[int, str, int]]  # (position in the split, path, label)
    want_sum: bool  # the training split feeds the mean image
    # Segmentation: the label image of each item, and the database they go to.
    label_paths: tuple[str, ...] = ()
    label_db: str = ""
    # Detection: the objects of each item (class, left, top, right, bottom), in its pixels.
    objects: tuple[tuple[tuple[Any, ...], ...], ...] = ()


@dataclass
class ChunkResult:
    split: str
    written: list[tuple[int, int, bytes]]  # (position, label, the record's digest), in position order
    failed: list[tuple[int, str, int, str]]  # (position, path, label, reason)
    class_pixels: Any = None  # segmentation: int64 pixels per class id (IGNORE_LABEL last)
    label_digests: list[bytes] = field(default_factory=list)  # segmentation: of each label record, aligned
    # Detection: (position, (K, 5) float32 [left, top, right, bottom, class]) of each image
    # written, its boxes moved as the image was resized.
    boxes: list[tuple[int, Any]] = field(default_factory=list)


# Bytes of an image up to which a chunk's images are summed at once (PixelSum.add_many).
SMALL_IMAGE = 4096


class PixelSum:
    """The exact sum of a worker's training images, for the mean image: added up as
    uint16 (a third of the time of uint32 on large images), folded into a uint32 total
    every 257 images (255 x 257 = 65535 still fits), which the worker sends to the parent
    at its end, or before it could overflow. Made at the first image: a worker that only
    encodes other splits holds none (6 bytes a pixel: 100 MB for a 4096x4096 colour image)."""

    # Images a uint32 total takes (255 each) with room for one more fold of 257.
    LIMIT = (2**32 - 1) // 255 - 257

    def __init__(self) -> None:
        self.part: np.ndarray | None = None
        self.total: np.ndarray | None = None
        self.in_part = self.in_total = 0

    def add(self, pixels: np.ndarray) -> None:
        if self.part is None:
            self.part = np.zeros(pixels.shape, np.uint16)
            self.total = np.zeros(pixels.shape, np.uint32)
        np.add(self.part, pixels, out=self.part)
        self.in_part += 1
        if self.in_part == 257:
            self._fold()

    def add_many(self, images: list[np.ndarray]) -> None:
        """Add a chunk of small images (at most 257) in one reduction: a third of the time
        of adding them one by one, where numpy's call costs more than the sum."""
        if not images:
            return
        self._fold()
        if self.part is None:
            self.part = np.zeros(images[0].shape, np.uint16)
            self.total = np.zeros(images[0].shape, np.uint32)
        np.add.reduce(images, axis=0, dtype=np.uint16, out=self.part)
        self.in_part = len(images)
        self._fold()

    def _fold(self) -> None:
        if self.part is not None and self.total is not None and self.in_part:
            self.total += self.part
            self.part[:] = 0
            self.in_total += self.in_part
            self.in_part = 0

    def due(self) -> bool:
        return self.in_total + self.in_part >= self.LIMIT

    def take(self) -> np.ndarray | None:
        """The sum since the last take (None if no image was added), and start again."""
        self._fold()
        total, self.total, self.part = self.total, None, None
        self.in_total = 0
        return total


@dataclass
class PixelTotal:
    """A worker's sum of the training images it wrote (since its previous one), as uint32."""

    pixels: np.ndarray


@dataclass
class WorkerDone:
    """A worker's last message: it has no chunk left."""


@dataclass
class WorkerFailed:
    """A worker's unexpected error (not a full disk), with its traceback for the job log."""

    error: str
    traceback: str


@dataclass(frozen=True)
class Encoder:
    """What each worker does to a chunk: decode, resize and encode every image, and
    write the chunk into the split's database itself, so pixels never pass through the
    parent (on a few cores the parent's share of the CPU is what the workers lose)."""

    width: int
    height: int
    channels: int
    resize_mode: str
    encoding: str
    quality: int
    seed: int
    colours: tuple[tuple[int, int, int], ...] = ()  # segmentation: the classes' colours

    def record_bytes(self) -> int:
        """An upper bound of one stored image (raw pixels, or PNG/JPEG of them)."""
        raw = self.width * self.height * self.channels
        return raw + raw // 8 + self.height + 2048

    def __call__(self, chunk: Chunk, pixel_sum: PixelSum | None = None) -> ChunkResult:
        """Encode and store `chunk`, adding its training images into `pixel_sum`."""
        records: list[tuple[int, int, bytes]] = []
        failed: list[tuple[int, str, int, str]] = []
        summed = pixel_sum if chunk.want_sum else None
        small: list[np.ndarray] = []  # summed at the chunk's end (a chunk of them is at most 256)
        segmentation = bool(chunk.label_db)
        detection = bool(chunk.objects)
        boxes: list[tuple[int, Any]] = []
        label_records: list[tuple[int, int, bytes]] = []
        class_pixels = np.zeros(256, dtype=np.int64) if segmentation else None
        for n, (position, path, label) in enumerate(chunk.items):
            try:
                if segmentation:
                    # Its size is the image's as stored, before a JPEG's reduced decoding.
                    img = load_image(path, self.channels)
                    mask = load_mask(chunk.label_paths[n], list(self.colours), img.size)
                elif detection:  # the boxes are in the pixels of the full image
                    img = load_image(path, self.channels)
                else:
                    img = load_image(path, self.channels, (self.width, self.height))
                # A per-image seed: the noise padding is the same in every rebuild or clone.
                seed = self.seed * 1_000_003 + chunk.seed_offset + position
                arr = to_array(resize_image(img, self.width, self.height, self.resize_mode, seed=seed))
                data = encode(arr, self.encoding, self.quality)
                if segmentation:
                    ids = to_array(resize_image(mask, self.width, self.height, self.resize_mode, pad=IGNORE_LABEL))
                    label_data = encode(ids, "png")
                if detection:
                    found = np.asarray([o[1:] for o in chunk.objects[n]], dtype=np.float64).reshape(-1, 4)
                    moved, kept = resize_boxes(found, img.size, self.width, self.height, self.resize_mode)
                    classes = np.asarray([o[0] for o in chunk.objects[n]], dtype=np.float32).reshape(-1)[kept]
                    placed = np.concatenate([moved, classes[:, None]], axis=1).astype(np.float32)
            except PermissionError as exc:
                failed.append((position, path, label, f"not readable ({exc.strerror})"))
                continue
            except ValueError as exc:
                failed.append((position, path, label, str(exc)))
                continue
            except Exception as exc:  # a worker must never die on one bad file
                failed.append((position, path, label, f"{type(exc).__name__}: {exc}"))
                continue
            if summed is not None:
                if arr.nbytes <= SMALL_IMAGE:
                    small.append(arr)
                else:  # large: one by one (a reduction over a stack of them is slower)
                    summed.add(arr)
            records.append((position, label, data))
            if class_pixels is not None:
                class_pixels += np.bincount(ids.reshape(-1), minlength=256)
                label_records.append((position, 0, label_data))
            if detection:
                boxes.append((position, placed))
        if summed is not None:
            summed.add_many(small)
        digests = write_records(Path(chunk.db), chunk.map_size, records)
        label_digests = write_records(Path(chunk.label_db), chunk.map_size, label_records) if segmentation else []
        written = [(position, label, digest) for (position, label, _), digest in zip(records, digests)]
        return ChunkResult(chunk.split, written, failed, class_pixels, label_digests, boxes)


class WorkerDied(Exception):
    pass


def chunk_bounds(sizes: list[int], largest: int, processes: int) -> list[tuple[int, int, int]]:
    """(split number, start, end) of every chunk, in the order they are taken: at most
    `largest` images, and smaller towards the end (a quarter of each worker's share of
    what is left), so that the workers finish within a small chunk of each other instead
    of one waiting for another's last big one."""
    smallest = max(1, min(16, largest))
    left = sum(sizes)
    bounds = []
    for split_no, size in enumerate(sizes):
        start = 0
        while start < size:
            n = min(size - start, max(smallest, min(largest, left // (4 * processes))))
            bounds.append((split_no, start, start + n))
            start += n
            left -= n
    return bounds


def _work(encoder: Encoder, chunk_of: Callable[[int], Chunk], count: int, taken: Any, pipe: Any, inherited: list[Any]) -> None:
    """A worker process: encode chunk after chunk, taken by number from the shared
    counter, sending each result back, and its pixel sum (PixelTotal); then WorkerDone.
    A full disk is sent as the StoreWriteError it is, any other error as WorkerFailed;
    either ends the process. A process that dies says nothing: its pipe's end tells the
    parent."""
    for reader in inherited:  # the parent's ends, its own and its elder siblings': the
        reader.close()  # parent's death must be a broken pipe here, not a hang
    pixel_sum = PixelSum()
    try:
        while True:
            with taken.get_lock():
                n = taken.value
                taken.value = n + 1
            if n >= count:
                break
            pipe.send(encoder(chunk_of(n), pixel_sum))
            if pixel_sum.due():
                _send_total(pipe, pixel_sum)
        _send_total(pipe, pixel_sum)
        pipe.send(WorkerDone())
    except StoreWriteError as exc:
        pipe.send(exc)
    except Exception as exc:  # noqa: BLE001 - said in the parent, with the traceback
        pipe.send(WorkerFailed(f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    finally:
        pipe.close()


def _send_total(pipe: Any, pixel_sum: PixelSum) -> None:
    total = pixel_sum.take()
    if total is not None:
        pipe.send(PixelTotal(total))


def _start_workers(
    encoder: Encoder, chunk_of: Callable[[int], Chunk], count: int, processes: int, pipes: dict[Any, Any],
) -> None:
    """Fork `processes` workers sharing `count` chunks into `pipes`: {the end of each one's
    pipe: it} (filled as they start, so the caller stops those started if one fails)."""
    context = mp.get_context("fork")
    taken = context.Value("q", 0)
    for _ in range(processes):
        reader, writer = context.Pipe(duplex=False)
        process = context.Process(
            target=_work, args=(encoder, chunk_of, count, taken, writer, [reader, *pipes]), daemon=True,
        )
        try:
            process.start()
        finally:
            writer.close()  # the worker holds the only writing end: its death is an end of file here
        pipes[reader] = process


def _results(pipes: dict[Any, Any]) -> Iterator[ChunkResult | PixelTotal]:
    """The workers' results as they come (out of order), and their pixel sums, until
    every worker is done. Raises WorkerDied when one ends without having said it was done
    (killed, out of memory), and what a worker sent as its error."""
    live = dict(pipes)
    while live:
        for reader in wait(list(live)):
            try:
                message = cast(Connection, reader).recv()
            except (EOFError, OSError):  # OSError: its end came in the middle of a message
                raise WorkerDied(live[reader].pid) from None
            if isinstance(message, BaseException):
                raise message
            if isinstance(message, WorkerFailed):
                print(message.traceback, file=sys.stderr)  # in the job log
                raise BuildError(
                    f"A decoding process failed ({message.error}). Nothing was kept; build again, and if it happens "
                    "again, show the job log to an admin."
                )
            if isinstance(message, WorkerDone):
                del live[reader]
            else:
                yield cast(ChunkResult | PixelTotal, message)


def _stop_workers(pipes: dict[Any, Any], *, kill: bool) -> None:
    """Wait for the workers after their last result (they are exiting), or kill them
    after a failure (they may be mid-chunk). Stopping twice is harmless."""
    for reader, process in pipes.items():
        if kill and process.exitcode is None:
            process.kill()
        process.join()
        reader.close()


def chunk_size_for(width: int, height: int, channels: int) -> int:
    """Chunks of about 4 MB of pixels: few round trips for small images, bounded memory for
    big ones, and at most 256 images (a message per chunk is cheap at that size)."""
    return max(4, min(256, 4_000_000 // max(1, width * height * channels)))


def build(spec: BuildSpec | dict[str, Any]) -> dict[str, Any]:
    if isinstance(spec, dict):
        spec = BuildSpec.from_dict(spec)
    out_dir = Path(spec.output_dir)
    width, height, channels = spec.width, spec.height, spec.channels
    encoding = spec.encoding
    tmp = out_dir / "build.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.monotonic()

    gathered = gather(spec, tmp)
    segmentation = spec.task == "segmentation"
    detection = spec.task == "detection"
    encoder = Encoder(
        width, height, channels, spec.resize_mode, encoding, spec.jpeg_quality, spec.seed, tuple(gathered.colours)
    )
    labels, splits, skipped = gathered.labels, gathered.splits, gathered.skipped
    total = sum(len(splits[s]) for s in gathered.requested)
    if total == 0:
        raise BuildError(f"No usable image files were found. Supported: {', '.join(sorted(IMAGE_EXTENSIONS))}.")

    # String work, not Path objects: this meets every image of the dataset (Path's
    # relative_to took 0.1 s of a 0.9 s build of 20,000 small images).
    prefix = str(gathered.root).rstrip(os.sep) + os.sep if gathered.root is not None else None

    def report_path(path: str) -> str:
        if path in gathered.names:
            return gathered.names[path]
        if prefix is not None and path.startswith(prefix):
            return path[len(prefix) :]
        return path

    done = 0
    encode_started = time.monotonic()
    last_report = 0.0
    counts: dict[str, int] = {}
    class_counts: dict[str, list[int]] = {}
    # What the databases hold, for the reproducibility record of every run trained on them
    # (lmdb_store.content_digest), from the digests of the records the workers wrote.
    checksums: dict[str, str] = {}
    mean_sum = np.zeros((height, width, channels), dtype=np.float64)
    processes = max(1, spec.workers or os.cpu_count() or 1)
    chunk = chunk_size_for(width, height, channels)
    meta = {"width": width, "height": height, "channels": channels, "encoding": encoding}
    map_size = map_size_for(max((len(splits[s]) for s in gathered.requested), default=0), encoder.record_bytes())
    writers: dict[str, LmdbWriter] = {}
    label_writers: dict[str, LmdbWriter] = {}  # segmentation
    class_pixels = {split: np.zeros(256, dtype=np.int64) for split in gathered.requested}
    boxes: dict[str, dict[int, Any]] = {split: {} for split in gathered.requested}  # detection: position -> (K, 5)
    order = {split: n for n, split in enumerate(gathered.requested)}
    unreadable: list[tuple[int, int, str, str]] = []  # (split, position, path, reason): reported in order
    # (position, label, the record's digest)
    written: dict[str, list[tuple[int, int, bytes]]] = {split: [] for split in gathered.requested}
    label_digests: dict[str, dict[int, bytes]] = {split: {} for split in gathered.requested}  # segmentation
    gaps: dict[str, list[int]] = {split: [] for split in gathered.requested}
    # One stream of chunks over every split, so no worker waits between splits.
    bounds = chunk_bounds([len(splits[split]) for split in gathered.requested], chunk, processes)
    for split in gathered.requested:  # made before the fork (the workers write into them at once), opened after
        (tmp / f"{split}_db").mkdir()
        if segmentation:
            (tmp / f"{split}_labels_db").mkdir()

    def chunk_of(n: int) -> Chunk:
        # Called in the workers, on the lists they inherited: nothing is sent to them.
        split_no, start, end = bounds[n]
        split = gathered.requested[split_no]
        masks = gathered.label_images.get(split, [])
        objects = gathered.objects.get(split, [])
        return Chunk(
            split, str(tmp / f"{split}_db"), map_size, split_no * 10_000_000,
            [(i, *splits[split][i]) for i in range(start, end)], split == "train",
            tuple(masks[start:end]), str(tmp / f"{split}_labels_db") if segmentation else "",
            tuple(tuple(o) for o in objects[start:end]),
        )

    # The pages the workers commit reach the disk in the background while they encode;
    # otherwise the final sync writes them all at once (hundreds of MB for raw pixels)
    # while every core waits.
    stop_flushing = threading.Event()

    def flush() -> None:
        while not stop_flushing.wait(FLUSH_SECONDS):
            for writer in [*writers.values(), *label_writers.values()]:
                writer.sync()

    flusher = threading.Thread(target=flush, name="lmdb-flush", daemon=True)

    # Each source path's line of the paths file, made a slice at a time between two
    # results while the workers encode: after them, the cores would wait for it (30 ms
    # of a 1.4 s build of 20,000 small images).
    lines: dict[str, list[bytes]] = {split: [] for split in gathered.requested}

    def make_lines() -> Iterator[None]:
        for split in gathered.requested:
            items = splits[split]
            for start in range(0, len(items), 2048):
                lines[split].extend(path_lines(report_path(item[0]) for item in items[start : start + 2048]))
                yield

    line_steps = make_lines()
    workers: dict[Any, Any] = {}
    # Pillow's common formats imported once, here, not in every worker at its first image
    # and again here at the mean image (15-20 ms each).
    Image.preinit()
    try:
        _start_workers(encoder, chunk_of, len(bounds), processes, workers)
        # Opened after the fork: an LMDB environment (or a thread) must not be inherited by a child.
        for split in gathered.requested:
            writers[split] = LmdbWriter(tmp / f"{split}_db", map_size=map_size)
            if segmentation:
                label_writers[split] = LmdbWriter(tmp / f"{split}_labels_db", map_size=map_size)
        flusher.start()
        for result in _results(workers):
            next(line_steps, None)
            if isinstance(result, PixelTotal):
                mean_sum += result.pixels
                continue
            written[result.split].extend(result.written)
            if segmentation:
                label_digests[result.split].update(zip((w[0] for w in result.written), result.label_digests))
            for position, path, _label, reason in result.failed:
                gaps[result.split].append(position)
                unreadable.append((order[result.split], position, path, reason))
            if result.class_pixels is not None:
                class_pixels[result.split] += result.class_pixels
            boxes[result.split].update(result.boxes)
            done += len(result.written) + len(result.failed)
            now = time.monotonic()
            if now - last_report > 0.5:
                last_report = now
                rate = done / max(now - encode_started, 1e-6)
                emit(protocol.Progress(progress=done / total, eta=(total - done) / rate if rate else None, phase="encoding"))
        _stop_workers(workers, kill=False)
        for _ in line_steps:  # the slices left, if the results came faster
            pass
        skipped.extend({"path": report_path(path), "reason": reason} for _, _, path, reason in sorted(unreadable))
        for split, writer in writers.items():
            kept = sorted(written[split])
            positions, labels_kept, digests = zip(*kept) if kept else ((), (), ())
            split_labels = list(labels_kept)
            # Records keep their order once the gaps of unreadable files are closed.
            write_lines(tmp, split, [lines[split][p] for p in positions] if gaps[split] else lines[split])
            counts[split] = writer.close(meta, split_labels, gaps[split], len(splits[split]))
            checksums[split] = writer.content_digest(list(digests))
            if detection:
                # Record i's boxes: rows offsets[i]:offsets[i + 1] (the gaps closed as in the database).
                placed = [boxes[split][position] for position in positions]
                stacked = np.concatenate(placed) if placed else np.zeros((0, 5), dtype=np.float32)
                offsets = np.cumsum([0] + [len(b) for b in placed]).astype(np.int64)
                with open(tmp / f"{split}_objects.npz", "wb") as fh:
                    np.savez(fh, boxes=stacked[:, :4], labels=stacked[:, 4].astype(np.int64), offsets=offsets)
                per_object = np.bincount(stacked[:, 4].astype(np.int64), minlength=len(labels))
                class_counts[split] = [int(v) for v in per_object[: len(labels)]]
            if segmentation:
                # The same gaps closed the same way: record i of both databases is one pair.
                label_meta = {"width": width, "height": height, "channels": 1, "encoding": "png"}
                label_writers[split].close(label_meta, split_labels, gaps[split], len(splits[split]))
                checksums[f"{split}_labels"] = label_writers[split].content_digest(
                    [label_digests[split][position] for position in positions])
                class_counts[split] = [int(v) for v in class_pixels[split][: len(labels)]]
            elif not detection:
                per_class = Counter(split_labels)
                class_counts[split] = [per_class[i] for i in range(len(labels))]
    except WorkerDied as exc:
        raise BuildError(
            f"A decoding process (pid {exc}) ended abruptly: killed, or out of memory (a very large image can "
            "need gigabytes to decode). Nothing was kept; build again, and if it happens again, look for very "
            "large images in the source or ask an admin about the worker's memory."
        ) from None
    except StoreWriteError as exc:
        raise BuildError(
            f"Could not write the dataset ({exc}). The disk holding {out_dir} may be full: "
            "free some space (or ask an admin to), then build again."
        ) from exc
    finally:
        stop_flushing.set()
        if flusher.is_alive():
            flusher.join()
        _stop_workers(workers, kill=True)  # before the databases they may still be writing go
        for writer in [*writers.values(), *label_writers.values()]:
            writer.abandon()

    usable = [i for i in range(len(labels)) if sum(class_counts[s][i] for s in counts) > 0]
    if detection:
        if counts["train"] == 0 or not sum(class_counts["train"]):
            raise BuildError("The training split has no object: check the labels (the job log lists every file left out).")
    elif segmentation and counts["train"] > 0 and len(usable) < 2:
        raise BuildError(
            f"The label images show {len(usable)} class(es) of the class list; segmentation needs pixels of two. "
            "Check that the label images use the class ids or colours of the class list."
        )
    if not detection and (len(usable) < 2 or counts["train"] == 0):
        reasons = Counter(s["reason"].split(" (")[0] for s in skipped)
        summary = "; ".join(f"{n} × {r}" for r, n in reasons.most_common(3))
        for s in skipped:
            print(f"skipped {s['path']}: {s['reason']}", file=sys.stderr)
        raise BuildError(
            f"Fewer than two classes have usable images ({summary or 'no images'}). "
            "Check the source; the job log lists every file left out."
        )

    mean = (mean_sum / counts["train"]).astype(np.float32)
    try:
        np.save(tmp / "mean.npy", mean)
        mean_u8 = np.clip(mean.round(), 0, 255).astype(np.uint8)
        Image.fromarray(mean_u8[:, :, 0] if channels == 1 else mean_u8).save(tmp / "mean.png")
        (tmp / "labels.txt").write_text("\n".join(labels) + "\n")
    except OSError as exc:
        raise BuildError(f"Could not write the mean image ({exc}). The disk may be full: free some space, then build again.") from exc
    if detection:
        checksums.update({
            f"{split}_objects": "blake2b:" + hashlib.blake2b((tmp / f"{split}_objects.npz").read_bytes(), digest_size=16).hexdigest()
            for split in counts
        })
    for name in OUTPUTS:
        if (tmp / name).exists():
            if (out_dir / name).is_dir():  # a build run again (its job retried) after it had moved some
                shutil.rmtree(out_dir / name)
            os.replace(tmp / name, out_dir / name)
    shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.monotonic() - started
    return {
        "labels": labels,
        "counts": counts,
        "class_counts": class_counts,
        "skipped": skipped,
        "dropped_classes": gathered.dropped,
        "mean_pixel": [float(v) for v in mean.reshape(-1, channels).mean(axis=0)],
        "checksums": checksums,
        "label_colours": [list(c) for c in gathered.colours],
        "ignored_pixels": {split: int(class_pixels[split][IGNORE_LABEL]) for split in counts} if segmentation else {},
        "seconds": seconds,
        "images_per_second": done / max(time.monotonic() - encode_started, 1e-6),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        spec = BuildSpec.from_dict(json.loads(args.spec.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        emit(protocol.Error(message=f"The build spec {args.spec} cannot be read: {exc}"))
        return 1
    keep_freed_memory()  # before the pool forks: its workers inherit it
    try:
        result = build(spec)
    except BuildError as exc:
        shutil.rmtree(Path(spec.output_dir) / "build.tmp", ignore_errors=True)
        emit(protocol.Error(message=str(exc)))
        return 1
    emit(protocol.Result(data=result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
