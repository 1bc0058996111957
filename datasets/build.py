"""Build an image classification dataset: scan, split, resize, encode into LMDB, mean image.

Runs as a child process of a Celery worker (or by hand):

    python -m datasets.build --spec /path/to/spec.json

It prints JSON lines on stdout (progress, result, error) and writes everything into
`<output_dir>/build.tmp` first, moving the finished files into place only at the end, so
a failed or killed build never leaves half-written databases behind.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .imaging import IMAGE_EXTENSIONS, decode, encode_png, load_image, resize_image, to_array
from .lmdb_store import LmdbWriter

SPLITS = ("train", "val")
OUTPUTS = ("train_db", "val_db", "labels.txt", "mean.npy", "mean.png")


class BuildError(Exception):
    pass


def emit(event: str, **data: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


def scan_folder(root: Path) -> tuple[list[str], list[tuple[str, int]], list[dict[str, str]]]:
    """Class subfolders (sorted names are the labels) and their image files, walked
    recursively without following links out of the tree. Returns labels, items, skipped."""
    labels = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    items: list[tuple[str, int]] = []
    skipped: list[dict[str, str]] = []
    for index, label in enumerate(labels):
        for dirpath, dirnames, filenames in os.walk(root / label, followlinks=False):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if path.suffix.lower() not in IMAGE_EXTENSIONS:
                    skipped.append({"path": str(path.relative_to(root)), "reason": "not an image file (by extension)"})
                elif path.is_symlink():
                    skipped.append({"path": str(path.relative_to(root)), "reason": "symbolic link (not followed)"})
                else:
                    items.append((str(path), index))
    return labels, items, skipped


def split_items(items: list[tuple[str, int]], val_percent: float, seed: int) -> dict[str, list[tuple[str, int]]]:
    """Stratified split: per class, round(n * val%) images go to validation, at least one
    when the class has two or more images and val% > 0."""
    rng = random.Random(seed)
    by_class: dict[int, list[tuple[str, int]]] = {}
    for item in items:
        by_class.setdefault(item[1], []).append(item)
    out: dict[str, list[tuple[str, int]]] = {"train": [], "val": []}
    for label in sorted(by_class):
        group = by_class[label]
        rng.shuffle(group)
        n_val = round(len(group) * val_percent / 100.0)
        if val_percent > 0 and len(group) >= 2:
            n_val = max(1, n_val)
        n_val = min(n_val, len(group) - 1) if len(group) > 1 else 0
        out["val"].extend(group[:n_val])
        out["train"].extend(group[n_val:])
    for split in out.values():
        rng.shuffle(split)
    return out


def _process(task: tuple[str, int, int, int, int, str, int]) -> tuple[str, int, bytes | None, str]:
    path, label, width, height, channels, mode, seed = task
    try:
        img = resize_image(load_image(path, channels), width, height, mode, seed=seed)
        return path, label, encode_png(to_array(img)), ""
    except ValueError as exc:
        return path, label, None, str(exc)
    except Exception as exc:  # a worker must never die on one bad file
        return path, label, None, f"{type(exc).__name__}: {exc}"


def build(spec: dict[str, Any]) -> dict[str, Any]:
    root = Path(spec["folder"])
    out_dir = Path(spec["output_dir"])
    width, height, channels = int(spec["width"]), int(spec["height"]), int(spec["channels"])
    mode = spec.get("resize_mode", "squash")
    seed = int(spec.get("seed", 0))
    tmp = out_dir / "build.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    labels, items, skipped = scan_folder(root)
    if len(labels) < 2:
        raise BuildError(f"{root} has {len(labels)} class subfolder(s); a classification dataset needs at least two.")
    splits = split_items(items, float(spec.get("val_percent", 25)), seed)
    total = sum(len(v) for v in splits.values())
    if total == 0:
        raise BuildError(f"No image files found under {root}. Supported: {', '.join(sorted(IMAGE_EXTENSIONS))}.")

    done = 0
    started = time.monotonic()
    last_report = 0.0
    counts: dict[str, int] = {}
    class_counts: dict[str, list[int]] = {}
    mean_sum = np.zeros((height, width, channels), dtype=np.float64)
    processes = int(spec.get("workers") or os.cpu_count() or 1)
    with mp.get_context("fork").Pool(processes) as pool:
        for split in SPLITS:
            writer = LmdbWriter(tmp / f"{split}_db")
            per_class: Counter[int] = Counter()
            tasks = [(p, lab, width, height, channels, mode, seed + i) for i, (p, lab) in enumerate(splits[split])]
            for path, label, encoded, reason in pool.imap(_process, tasks, chunksize=16):
                done += 1
                if encoded is None:
                    skipped.append({"path": str(Path(path).relative_to(root)), "reason": reason})
                else:
                    writer.add(label, encoded)
                    per_class[label] += 1
                    if split == "train":
                        mean_sum += decode(encoded)
                now = time.monotonic()
                if now - last_report > 0.5:
                    last_report = now
                    rate = done / max(now - started, 1e-6)
                    emit("progress", progress=done / total, eta=(total - done) / rate if rate else None)
            writer.close({"width": width, "height": height, "channels": channels, "encoding": "png"})
            counts[split] = writer.count
            class_counts[split] = [per_class[i] for i in range(len(labels))]

    usable = [i for i in range(len(labels)) if sum(class_counts[s][i] for s in SPLITS) > 0]
    if len(usable) < 2 or counts["train"] == 0:
        reasons = Counter(s["reason"].split(" (")[0] for s in skipped)
        summary = "; ".join(f"{n} x {r}" for r, n in reasons.most_common(3))
        raise BuildError(f"Fewer than two classes have usable images ({summary or 'no images'}). Check the folder.")

    mean = (mean_sum / counts["train"]).astype(np.float32)
    np.save(tmp / "mean.npy", mean)

    mean_u8 = np.clip(mean.round(), 0, 255).astype(np.uint8)
    Image.fromarray(mean_u8[:, :, 0] if channels == 1 else mean_u8).save(tmp / "mean.png")
    (tmp / "labels.txt").write_text("\n".join(labels) + "\n")
    for name in OUTPUTS:
        os.replace(tmp / name, out_dir / name)
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "labels": labels,
        "counts": counts,
        "class_counts": class_counts,
        "skipped": skipped,
        "mean_pixel": [float(v) for v in mean.reshape(-1, channels).mean(axis=0)],
        "seconds": time.monotonic() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, type=Path)
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    try:
        result = build(spec)
    except BuildError as exc:
        shutil.rmtree(Path(spec["output_dir"]) / "build.tmp", ignore_errors=True)
        emit("error", message=str(exc))
        return 1
    emit("result", **result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
