"""Reads for datasets."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from dataclasses import dataclass

import numpy as np
from django.db.models import QuerySet

from workers import storage
from workers.errors import JobError, NotFound
from workers.models import JobStatus

from .imaging import IGNORE_LABEL, decode, encode
from .source_paths import paths_files
from .lmdb_store import meta_shape, open_readonly, read_labels, read_meta, read_raw, read_record
from .models import Dataset


def dataset_list() -> QuerySet[Dataset]:
    return Dataset.objects.select_related("job", "job__owner").order_by("-job__created_at")


def dataset_names() -> QuerySet[Dataset]:
    """Datasets, newest first, with nothing but their names loaded (a pick list of
    hundreds should not read every dataset's labels and counts)."""
    return Dataset.objects.select_related("job").only("job__name").order_by("-job__created_at")


def dataset_usable_list() -> QuerySet[Dataset]:
    """Datasets a model can be trained on: built, or still building (the model waits)."""
    return dataset_list().filter(job__status__in=[JobStatus.DONE, *JobStatus.active()])


@dataclass
class GalleryPage:
    split: str
    label: int | None
    page: int
    per_page: int
    total: int
    indices: list[int]
    labels: list[int]

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    @property
    def has_previous(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        return self.page < self.pages


def _check_split(dataset: Dataset, split: str) -> None:
    """Stored images exist only once the build is done; say why when they do not."""
    status = dataset.job.status
    if status == JobStatus.ABORTED:
        raise NotFound("This dataset's build was aborted, so it stored no images. Clone it to build it again.")
    if status == JobStatus.ERROR:
        raise NotFound(f"This dataset's build failed, so it stored no images: {dataset.job.error}")
    if status != JobStatus.DONE:
        raise NotFound("This dataset is still building; its images can be explored once it is done.")
    if split not in dataset.counts:
        splits = ", ".join(dataset.splits) or "none"
        raise NotFound(f"This dataset has no {split} split (it has: {splits}).")
    # From the artifact store, when this host has not got it: this split's files only.
    for path in (dataset.split_path(split), *paths_files(dataset.directory, split), dataset.mean_path,
                 *([dataset.label_split_path(split)] if dataset.is_segmentation else []),
                 *([dataset.objects_path(split)] if dataset.is_detection else [])):
        storage.fetch(path)
    if not dataset.split_path(split).exists():  # the data folder lost or moved, no store to fetch from
        raise NotFound(
            f"This dataset's {split} images are missing from the data folder ({dataset.split_path(split)}): "
            "restore that folder, or build the dataset again (Clone)."
        )


def dataset_gallery(dataset: Dataset, split: str, *, label: int | None = None, page: int = 1, per_page: int = 60) -> GalleryPage:
    """One page of stored images of a split, optionally of one class (read from the
    split's label index: no image is decoded to filter)."""
    _check_split(dataset, split)
    if label is not None and not 0 <= label < len(dataset.labels):
        raise NotFound(f"This dataset has no class {label}: its classes are 0 to {len(dataset.labels) - 1}.")
    labels = read_labels(dataset.split_path(split))
    indices = np.arange(len(labels)) if label is None else np.flatnonzero(labels == label)
    per_page = max(1, min(per_page, 200))
    pages = max(1, -(-len(indices) // per_page))
    page = min(max(1, page), pages)
    chosen = indices[(page - 1) * per_page : page * per_page]
    return GalleryPage(split, label, page, per_page, len(indices), chosen.tolist(), labels[chosen].tolist())


def dataset_image(dataset: Dataset, split: str, index: int) -> tuple[bytes, str, int]:
    """The stored image `index` of a split as (bytes, content type, label). Raw images
    are encoded as PNG for the browser."""
    _check_split(dataset, split)
    path = dataset.split_path(split)
    meta = read_meta(path)
    with open_readonly(path).begin() as txn:
        try:
            data, label = read_raw(txn, index)
        except IndexError:
            raise NotFound(f"The {split} split has no image {index}.") from None
    encoding = meta.get("encoding", "png")
    if encoding == "jpeg":
        return data, "image/jpeg", label
    if encoding == "none":
        return encode(decode(data, "none", meta_shape(meta)), "png"), "image/png", label
    return data, "image/png", label


LABEL_VIEWS = ("image", "labels", "overlay", "boxes")
# Colours of the boxes drawn, one per class (cycled).
BOX_COLOURS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40))


def dataset_objects(dataset: Dataset, split: str, index: int) -> list[dict[str, Any]]:
    """Detection: the objects of record `index` ({label, index, box: [left, top, right,
    bottom]} in the stored image's pixels)."""
    _check_split(dataset, split)
    with np.load(dataset.objects_path(split)) as data:
        offsets = data["offsets"]
        if not 0 <= index < len(offsets) - 1:
            raise NotFound(f"The {split} split has no image {index}.")
        start, end = int(offsets[index]), int(offsets[index + 1])
        boxes, labels = data["boxes"][start:end], data["labels"][start:end]
    return [
        {"label": dataset.labels[int(c)], "index": int(c), "box": [round(float(v), 2) for v in box]}
        for box, c in zip(boxes, labels)
    ]


def draw_boxes(pixels: np.ndarray, objects: list[dict[str, Any]], scale: int = 1) -> bytes:
    """The image (HxWxC uint8) with each object's box and class name drawn, as PNG; small
    images are enlarged `scale` times first so the names can be read."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).convert("RGB")
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        colour = BOX_COLOURS[obj["index"] % len(BOX_COLOURS)]
        left, top, right, bottom = (v * scale for v in obj["box"])
        draw.rectangle([left, top, right - 1, bottom - 1], outline=colour, width=max(1, scale // 2))
        draw.text((left + 2, max(0, top - 11)), obj["label"], fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def dataset_label_view(dataset: Dataset, split: str, index: int, show: str) -> bytes:
    """Segmentation: the label image of record `index` in its classes' colours ("labels"),
    or blended over the image ("overlay"; ignored pixels show the image alone), as PNG.
    Detection: the image with its objects' boxes ("boxes")."""
    if show not in LABEL_VIEWS[1:]:
        raise JobError(f"Show one of {', '.join(LABEL_VIEWS)}.", field="show")
    if show == "boxes":
        if not dataset.is_detection:
            raise JobError("Only a detection dataset has boxes.", field="show")
        pixels = dataset_pixels(dataset, split, index)
        # Enlarged to about 256 pixels, so that the names of the classes can be read.
        return draw_boxes(pixels, dataset_objects(dataset, split, index), scale=max(1, 256 // max(pixels.shape[:2])))
    if not dataset.is_segmentation:
        raise JobError("Only a segmentation dataset has label images.", field="show")
    _check_split(dataset, split)
    path = dataset.label_split_path(split)
    meta = read_meta(path)
    with open_readonly(path).begin() as txn:
        try:
            ids, _ = read_record(txn, index, meta)
        except IndexError:
            raise NotFound(f"The {split} split has no image {index}.") from None
    ids = ids[:, :, 0]
    if show == "overlay":
        return encode(overlay_labels(dataset_pixels(dataset, split, index), ids, dataset.label_colours), "png")
    return encode(palette(dataset.label_colours)[ids], "png")


def dataset_pixels(dataset: Dataset, split: str, index: int) -> np.ndarray:
    """Record `index` of a split as stored (HxWxC uint8)."""
    _check_split(dataset, split)
    meta = read_meta(dataset.split_path(split))
    with open_readonly(dataset.split_path(split)).begin() as txn:
        try:
            pixels, _ = read_record(txn, index, meta)
        except IndexError:
            raise NotFound(f"The {split} split has no image {index}.") from None
    return pixels


def palette(colours: list[list[int]]) -> np.ndarray:
    """(256, 3) uint8: each class id's colour ([r, g, b] per class); black beyond."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(colours)] = np.asarray(colours, dtype=np.uint8).reshape(-1, 3)
    return table


def overlay_labels(pixels: np.ndarray, ids: np.ndarray, colours: list[list[int]]) -> np.ndarray:
    """The label image `ids` in its classes' colours blended over the image (HxWxC uint8);
    ignored pixels show the image alone."""
    base = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels
    blend = (0.45 * base + 0.55 * palette(colours)[ids]).round().astype(np.uint8)
    return np.where((ids == IGNORE_LABEL)[:, :, None], base, blend)


def data_folders(limit: int = 500, depth: int = 3) -> list[str]:
    """Folders under the data roots (the roots themselves first, then breadth first, at
    most `depth` levels, no symbolic links, no hidden folders): what the dataset form offers
    as the user types a server folder."""
    from django.conf import settings

    found: list[str] = []
    level = [Path(r) for r in settings.DATA_ROOTS if Path(r).is_dir()]
    for _ in range(depth + 1):
        found += [str(p) for p in level]
        if len(found) >= limit:
            break
        below = []
        for folder in level:
            try:
                below += sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
            except OSError:
                continue
        level = below
    return found[:limit]
