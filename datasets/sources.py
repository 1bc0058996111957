"""Where a dataset's images come from: a server folder of class subfolders, text lists of
`path label_index` lines, or an uploaded zip/tar archive of class folders.

Pure functions over the file system, used by the build child (`datasets.build`). Each
returns what it could use and a report of what it skipped and why; nothing here raises for
one bad file. Paths in the report are relative to the source root where there is one.
"""
from __future__ import annotations

import functools
import json

import os
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from .imaging import IMAGE_EXTENSIONS

Item = tuple[str, int]  # (absolute path of an image file, label index)
Skip = dict[str, str]  # {"path": ..., "reason": ...}

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


class SourceError(Exception):
    """Nothing usable can come from this source; the message says what to fix."""


def is_under(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def scan_folder(root: Path, labels: list[str] | None = None) -> tuple[list[str], list[Item], list[Skip]]:
    """Class subfolders of `root` (sorted names are the labels) and their image files,
    walked recursively without following symbolic links. With `labels` (a validation or
    test folder), subfolders must be among the training labels.

    Returns labels, items, skipped. Empty class folders are reported and left out."""
    skipped: list[Skip] = []
    try:
        subdirs = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise SourceError(f"Cannot read folder {root}: {exc.strerror or exc}.") from exc
    found: dict[str, list[str]] = {}
    for sub in subdirs:
        if sub.is_symlink():
            skipped.append({"path": sub.name, "reason": "symbolic link (not followed)"})
            continue
        if not sub.is_dir():
            skipped.append({"path": sub.name, "reason": "file outside a class folder"})
            continue
        if labels is not None and sub.name not in labels:
            skipped.append({"path": sub.name + "/", "reason": "class not in the training folder"})
            continue
        files: list[str] = []
        for dirpath, dirnames, filenames in os.walk(sub, followlinks=False, onerror=lambda e: skipped.append(
            {"path": _rel(Path(e.filename), root), "reason": f"folder not readable ({e.strerror})"}
        )):
            # os.walk lists links to folders among dirnames but never enters them.
            for name in sorted(dirnames):
                if os.path.islink(os.path.join(dirpath, name)):
                    skipped.append({"path": _rel(Path(dirpath, name), root), "reason": "symbolic link (not followed)"})
            dirnames.sort()
            # Plain strings, not Path objects: this loop meets every file of the dataset.
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                    skipped.append({"path": _rel(Path(path), root), "reason": "not an image file (by extension)"})
                elif os.path.islink(path):
                    skipped.append({"path": _rel(Path(path), root), "reason": "symbolic link (not followed)"})
                else:
                    files.append(path)
        if files:
            found[sub.name] = files
        elif labels is None:
            skipped.append({"path": sub.name + "/", "reason": "empty class folder (no images): class left out"})
    if labels is None:
        labels = sorted(found)
    index = {label: i for i, label in enumerate(labels)}
    items = [(path, index[label]) for label in labels for path in found.get(label, [])]
    return labels, items, skipped


def read_labels_file(path: Path) -> list[str]:
    """Line i is the name of label i. Trailing blank lines are ignored; others are not."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"Cannot read the labels file {path.name}: {exc}.") from exc
    while lines and not lines[-1].strip():
        lines.pop()
    labels = [line.strip() for line in lines]
    if any(not label for label in labels):
        raise SourceError(f"The labels file {path.name} has a blank line among its labels (line {labels.index('') + 1}).")
    if len(labels) < 2:
        raise SourceError(f"The labels file {path.name} lists {len(labels)} label(s); a classification dataset needs two.")
    return labels


def parse_list(
    path: Path, num_labels: int, image_folder: Path | None, roots: list[Path]
) -> tuple[list[Item], list[Skip]]:
    """A text list of `path label_index` lines (the path may contain spaces; the label is
    the last field). Relative paths are taken under `image_folder`. Every image must lie
    under one of the data roots once links are resolved."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"Cannot read the list {path.name}: {exc}.") from exc
    items: list[Item] = []
    skipped: list[Skip] = []
    for lineno, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path.name}:{lineno}"
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdecimal():
            skipped.append({"path": where, "reason": "expected 'path label_index'"})
            continue
        raw, label = parts[0], int(parts[1])
        if not 0 <= label < num_labels:
            skipped.append({"path": f"{where} {raw}", "reason": f"label index {label} out of range (0-{num_labels - 1})"})
            continue
        image = Path(raw)
        if not image.is_absolute():
            if image_folder is None:
                skipped.append({"path": f"{where} {raw}", "reason": "relative path, and no image folder was given"})
                continue
            image = image_folder / image
        resolved = image.resolve()
        if not is_under(resolved, roots):
            skipped.append({"path": f"{where} {raw}", "reason": "outside the allowed data roots"})
        elif not resolved.is_file():
            skipped.append({"path": f"{where} {raw}", "reason": "file not found"})
        elif resolved.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append({"path": f"{where} {raw}", "reason": "not an image file (by extension)"})
        else:
            items.append((str(resolved), label))
    return items, skipped


def _unsafe_member_name(name: str) -> str | None:
    """Why an archive member's name may not be extracted, or None when it is safe."""
    if "\x00" in name:
        return "name contains a NUL byte"
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or (pure.parts and pure.parts[0].endswith(":")):
        return "absolute path (not extracted)"
    if ".." in pure.parts:
        return "path leads outside the archive (not extracted)"
    return None


def _members(archive: Path) -> Iterable[tuple[str, str | None, int, Callable[[], object]]]:
    """(name, reason to skip or None, size, opener) for each file member, streaming."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                mode = info.external_attr >> 16
                zip_reason = "symbolic link (not extracted)" if stat.S_ISLNK(mode) else _unsafe_member_name(info.filename)
                yield info.filename, zip_reason, info.file_size, functools.partial(zf.open, info)
        return
    try:
        tf = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise SourceError(f"The upload is not a zip or tar archive ({exc}). Upload a .zip or .tar.gz of class folders.") from exc
    with tf:
        for member in tf:
            if member.isdir():
                continue
            if member.issym() or member.islnk():
                reason: str | None = "link (not extracted)"
            elif not member.isreg():
                reason = "not a regular file (not extracted)"
            else:
                reason = _unsafe_member_name(member.name)
            yield member.name, reason, member.size, functools.partial(tf.extractfile, member)


def extract_archive(
    archive: Path, dest: Path, max_bytes: int, progress: Callable[[float], None] | None = None
) -> tuple[Path, list[Skip]]:
    """Extract a zip or tar(.gz/.bz2/.xz) of class folders into `dest`, one member at a
    time (never the whole archive in memory). Links, devices, absolute names and names with
    `..` are skipped and reported; extraction stops with an error beyond `max_bytes`.

    Returns the folder holding the class subfolders (descending through a single wrapping
    folder, as when someone zips the dataset folder itself) and the skipped report."""
    dest.mkdir(parents=True, exist_ok=True)
    skipped: list[Skip] = []
    written = 0
    archive_size = max(archive.stat().st_size, 1)
    try:
        for name, reason, size, opener in _members(archive):
            if reason:
                skipped.append({"path": name, "reason": reason})
                continue
            parts = PurePosixPath(name.replace("\\", "/")).parts
            if any(p.startswith(".") for p in parts) or parts[0] == "__MACOSX":
                continue  # hidden files and macOS resource forks: not data, not worth a report line
            if written + size > max_bytes:
                raise SourceError(
                    f"The archive expands to more than {max_bytes // (1 << 20)} MiB; the limit is set by "
                    "DIGITS_MAX_ARCHIVE_EXTRACT_BYTES. Split it, or build from a server folder instead."
                )
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with opener() as src, target.open("wb") as out:  # type: ignore[attr-defined]
                shutil.copyfileobj(src, out, 1 << 20)
            written += size
            if progress is not None:
                progress(min(1.0, written / archive_size / 4))  # compressed ratio unknown: a rough guide
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise SourceError(f"The archive could not be read ({exc}). Upload it again; it may be truncated.") from exc
    root = dest
    while True:
        entries = [p for p in root.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
        if len(entries) == 1 and entries[0].is_dir() and not any(
            child.is_file() and child.suffix.lower() in IMAGE_EXTENSIONS for child in entries[0].iterdir()
        ) and any(child.is_dir() for child in entries[0].iterdir()):
            root = entries[0]
        else:
            return root, skipped


# -- segmentation: images paired with label images, and the class list --------------------

def default_colour(class_id: int) -> tuple[int, int, int]:
    """The colour of a class the class list names without one: PASCAL VOC's colour map
    (background black, then distinct colours for every id up to 255)."""
    r = g = b = 0
    c = class_id
    for shift in range(7, -1, -1):
        r |= ((c >> 0) & 1) << shift
        g |= ((c >> 1) & 1) << shift
        b |= ((c >> 2) & 1) << shift
        c >>= 3
    return r, g, b


def read_class_list(path: Path, at_least: int = 2) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Line i: the name of class i, optionally followed by its colour in RGB label images
    (`road 128 64 128`). Class 0 is usually the background. Names may contain spaces."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"Cannot read the class list {path.name}: {exc}.") from exc
    while lines and not lines[-1].strip():
        lines.pop()
    names: list[str] = []
    colours: list[tuple[int, int, int]] = []
    for number, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            raise SourceError(f"The class list {path.name} has a blank line among its classes (line {number}).")
        tail = parts[-3:]
        if len(parts) >= 4 and all(p.isdecimal() for p in tail):
            rgb = tuple(int(p) for p in tail)
            if any(v > 255 for v in rgb):
                raise SourceError(f"Line {number} of {path.name}: colour values go from 0 to 255.")
            names.append(" ".join(parts[:-3]))
            colours.append((rgb[0], rgb[1], rgb[2]))
        else:
            names.append(" ".join(parts))
            colours.append(default_colour(number - 1))
    if len(names) < at_least:
        raise SourceError(
            f"The class list {path.name} lists {len(names)} class(es); segmentation needs two (the background counts)."
            if at_least == 2 else f"The class list {path.name} lists no class."
        )
    if len(names) > 255:
        raise SourceError(f"The class list {path.name} lists {len(names)} classes; at most 255 (label 255 means 'ignore').")
    given = [c for c, line in zip(colours, lines) if len(line.split()) >= 4 and all(p.isdecimal() for p in line.split()[-3:])]
    if len(set(given)) < len(given):
        raise SourceError(f"Two classes of {path.name} have the same colour; each needs its own.")
    return names, colours


def _image_files(root: Path, skipped: list[Skip], what: str) -> dict[str, str]:
    """Image files under `root` (walked, links not followed) by their path relative to it
    without the extension."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=lambda e: skipped.append(
        {"path": f"[{what}] {_rel(Path(e.filename), root)}", "reason": f"folder not readable ({e.strerror})"}
    )):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS or os.path.islink(path):
                continue
            key = os.path.splitext(os.path.relpath(path, root))[0]
            if key in found:
                skipped.append({"path": f"[{what}] {_rel(Path(path), root)}", "reason": "another file has the same name"})
                continue
            found[key] = path
    return found


def pair_label_images(images: Path, labels: Path) -> tuple[list[tuple[str, str]], list[Skip]]:
    """(image, label image) pairs: files of the same name (without extension, in the same
    subfolder) in the two folders. Images without a label image, and label images without
    an image, are reported."""
    for folder, what in ((images, "image"), (labels, "label image")):
        if not folder.is_dir():
            raise SourceError(f"The {what} folder {folder} does not exist or is not a folder.")
    skipped: list[Skip] = []
    image_files = _image_files(images, skipped, "images")
    label_files = _image_files(labels, skipped, "labels")
    pairs = [(image_files[k], label_files[k]) for k in sorted(image_files) if k in label_files]
    skipped += [{"path": _rel(Path(image_files[k]), images), "reason": "no label image of that name"}
                for k in sorted(image_files) if k not in label_files]
    skipped += [{"path": f"[labels] {_rel(Path(label_files[k]), labels)}", "reason": "no image of that name"}
                for k in sorted(label_files) if k not in image_files]
    return pairs, skipped


# -- detection: images with boxes (KITTI label files, or a COCO JSON file) ----------------

# KITTI's label for regions to ignore: no object, and no background either.
KITTI_IGNORED = {"dontcare"}


def parse_kitti(path: str) -> list[tuple[str, float, float, float, float]]:
    """(class name, left, top, right, bottom) of each object of a KITTI label file (DIGITS'
    detection format: `type truncated occluded alpha left top right bottom ...`, 15 fields,
    16 with a score). Raises ValueError naming the line that is wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"label file not readable ({exc})") from exc
    objects = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 8:
            raise ValueError(f"line {number} has {len(fields)} fields; a KITTI label line has 15 (type, truncated, "
                             "occluded, alpha, left, top, right, bottom, ...)")
        try:
            left, top, right, bottom = (float(v) for v in fields[4:8])
        except ValueError:
            raise ValueError(f"line {number}: the box (fields 5 to 8) is not four numbers") from None
        if fields[0].lower() in KITTI_IGNORED:
            continue
        if not (right > left and bottom > top):
            raise ValueError(f"line {number}: the box {left:g},{top:g},{right:g},{bottom:g} is empty (right <= left or bottom <= top)")
        objects.append((fields[0], left, top, right, bottom))
    return objects


def pair_label_files(images: Path, labels: Path) -> tuple[list[tuple[str, str]], list[Skip]]:
    """(image, KITTI label file) pairs of the same name; an image without a label file
    has no object (a negative example), a label file without an image is reported."""
    for folder, what in ((images, "image"), (labels, "label")):
        if not folder.is_dir():
            raise SourceError(f"The {what} folder {folder} does not exist or is not a folder.")
    skipped: list[Skip] = []
    image_files = _image_files(images, skipped, "images")
    label_files: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(labels, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if name.endswith(".txt") and not os.path.islink(path):  # links are not followed, as for images
                label_files[os.path.splitext(os.path.relpath(path, labels))[0]] = path
    pairs = [(image_files[k], label_files.get(k, "")) for k in sorted(image_files)]
    skipped += [{"path": f"[labels] {_rel(Path(label_files[k]), labels)}", "reason": "no image of that name"}
                for k in sorted(label_files) if k not in image_files]
    return pairs, skipped


def read_coco(path: Path, images: Path) -> tuple[list[str], list[tuple[str, list[tuple[int, float, float, float, float]]]], list[Skip]]:
    """A COCO JSON file: the category names (in id order), and each image (its path under
    `images`) with its objects (class index, left, top, right, bottom). Crowd regions are
    left out, as COCO's own evaluation does; an image listed but missing is reported."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        categories = sorted(data["categories"], key=lambda c: c["id"])
        index = {c["id"]: i for i, c in enumerate(categories)}
        names = [str(c["name"]) for c in categories]
        by_image: dict[int, list[tuple[int, float, float, float, float]]] = {int(i["id"]): [] for i in data["images"]}
        for a in data.get("annotations", []):
            if a.get("iscrowd"):
                continue
            x, y, w, h = (float(v) for v in a["bbox"])
            if w > 0 and h > 0 and a["category_id"] in index and int(a["image_id"]) in by_image:
                by_image[int(a["image_id"])].append((index[a["category_id"]], x, y, x + w, y + h))
        files = [(int(i["id"]), str(i["file_name"])) for i in data["images"]]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise SourceError(f"{path.name} is not a readable COCO annotations file ({type(exc).__name__}: {exc}).") from exc
    if not names:
        raise SourceError(f"{path.name} lists no categories.")
    root = images.resolve()
    found, skipped = [], []
    for image_id, name in files:
        file = (images / name).resolve()
        if not file.is_file() and (images / "images" / name).is_file():  # names relative to images/
            file = (images / "images" / name).resolve()
        if not file.is_relative_to(root):
            skipped.append({"path": name, "reason": "outside the image folder"})
        elif not file.is_file():
            skipped.append({"path": name, "reason": "listed in the annotations, not in the image folder"})
        else:
            found.append((str(file), by_image[image_id]))
    return names, found, skipped
