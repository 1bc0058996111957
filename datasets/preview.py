"""The form's live preview: the user's first image, resized by every mode.

Only trusted code runs here (Pillow with the decompression-bomb guard), on one image.
"""
from __future__ import annotations

import base64
import io
import os
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from PIL import Image

from workers.errors import JobError

from .imaging import IMAGE_EXTENSIONS, RESIZE_MODES, load_image, resize_image
from .models import Upload

PREVIEW_MAX_BYTES = 50 * 1024 * 1024


def first_image_in_folder(folder: Path, class_folders: bool = True) -> Path:
    """The first image, in label order, as the build would meet it (anywhere under the
    folder when it is the image folder of text lists)."""
    subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) if class_folders else [folder]
    for sub in subs:
        for dirpath, dirnames, filenames in os.walk(sub):
            dirnames.sort()
            for name in sorted(filenames):
                if Path(name).suffix.lower() in IMAGE_EXTENSIONS and not (Path(dirpath) / name).is_symlink():
                    return Path(dirpath) / name
    raise JobError(f"No image found in the class subfolders of {folder}.", field="folder")


def first_image_in_upload(upload: Upload) -> tuple[str, BinaryIO]:
    """Name and bytes of the first image member of an uploaded archive."""
    path = upload.path
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                name = PurePosixPath(info.filename)
                if not info.is_dir() and name.suffix.lower() in IMAGE_EXTENSIONS and info.file_size <= PREVIEW_MAX_BYTES:
                    return info.filename, io.BytesIO(zf.read(info))
    else:
        with tarfile.open(path, "r:*") as tf:
            for member in tf:
                if member.isreg() and PurePosixPath(member.name).suffix.lower() in IMAGE_EXTENSIONS:
                    if member.size <= PREVIEW_MAX_BYTES:
                        file = tf.extractfile(member)
                        if file is not None:
                            return member.name, io.BytesIO(file.read())
    raise JobError(f"No image found in {upload.filename}.", field="upload")


def _data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def resize_preview(source: str | Path | BinaryIO, name: str, width: int, height: int, channels: int) -> dict:
    """{"name", "original": data URL (at most 256 px), "original_size", "modes": {mode: data URL}}."""
    if not (1 <= width <= 1024 and 1 <= height <= 1024):
        raise JobError("Preview sizes go up to 1024 pixels.", field="image_width")
    try:
        img = load_image(source, channels)
    except ValueError as exc:
        raise JobError(f"{name}: {exc}", field="folder") from exc
    thumb = img.copy()
    thumb.thumbnail((256, 256))
    return {
        "name": name,
        "original": _data_url(thumb),
        "original_size": list(img.size),
        "modes": {mode: _data_url(resize_image(img, width, height, mode, seed=0)) for mode in RESIZE_MODES},
    }
