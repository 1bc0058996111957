"""Evaluate a snapshot on a dataset split, or classify many images from a text list or an
upload (DIGITS' classify_many): the child process of an evaluation job.

    python -m models_app.evaluate --spec /path/to/spec.json

Runs every image through the network with validation's preprocessing (the dataset's
resize, mean subtraction, centre crop), writes `predictions.npz` into the job's folder
(each image's probabilities for every class and its given label, -1 for none; for files,
their names and paths) and reports the metrics over the images with ground truth, and
every line or file it could not use (models_app/image_inputs.py), as its result
(models_app/metrics.py) as its result. JSON lines on stdout, as the other children
(workers/protocol.py). The network's code may be the user's: it runs here, never in a
web or worker process.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from datasets.imaging import load_image, resize_image, to_array
from datasets.sources import SourceError, extract_archive
from workers import protocol
from workers.protocol import spec_from_dict

from .image_inputs import NO_LABEL, Input, Problem, gather_files, parse_classify_list

PREDICTIONS = "predictions.npz"


@dataclass(frozen=True)
class EvalSpec:
    output_dir: str = ""
    weights: str = ""  # the snapshot's file
    network: str = "lenet"
    custom_code: str = ""
    input_shape: tuple[int, ...] = ()  # (C, H, W) the network takes (after any crop)
    num_classes: int = 0
    db: str = ""  # the split's LMDB (source "split")
    mean: str = ""  # mean.npy
    crop_size: int = 0
    mean_subtraction: str = "image"
    batch_size: int = 64
    # Images from files instead of a split (models_app/image_inputs.py): "list" (a text
    # list of `path [label]` lines on the server) or "files" (uploaded images and archives).
    source: str = "split"
    list_file: str = ""
    image_folder: str = ""  # relative paths of the list are taken under it
    files_dir: str = ""  # uploaded images; archives are extracted into it
    archives: tuple[str, ...] = ()
    data_roots: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    width: int = 0  # the dataset's image size, mode and resize, as for its own images
    height: int = 0
    channels: int = 3
    resize_mode: str = "squash"
    max_extract_bytes: int = 16 << 30
    # Segmentation and detection (models_app/evaluate_spatial.py), on a split only: its
    # label images' LMDB, or its objects' file.
    task: str = "classification"
    labels_db: str = ""
    objects: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalSpec:
        return spec_from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def emit(event: protocol.Event) -> None:
    protocol.emit(event)
    sys.stdout.flush()


MAX_PROBLEMS = 1000  # reported line by line; beyond, only counted


def gather_inputs(spec: EvalSpec) -> tuple[list[Input], list[Problem]]:
    labels = list(spec.labels)
    if spec.source == "list":
        text = Path(spec.list_file).read_text(encoding="utf-8", errors="replace")
        folder = Path(spec.image_folder) if spec.image_folder else None
        return parse_classify_list(text, labels, folder, [Path(r) for r in spec.data_roots])
    files = Path(spec.files_dir)
    files.mkdir(parents=True, exist_ok=True)
    problems: list[Problem] = []
    for archive in spec.archives:
        emit(protocol.Progress(progress=0.0, phase=f"extracting {Path(archive).name}"))
        try:
            _root, skipped = extract_archive(Path(archive), files / Path(archive).name.split(".")[0], spec.max_extract_bytes)
        except SourceError as exc:
            raise ValueError(str(exc)) from None
        finally:
            Path(archive).unlink(missing_ok=True)  # extracted (or refused): not kept twice
        problems += [Problem(s["reason"], s["path"]) for s in skipped]
    inputs, more = gather_files(files, labels)
    return inputs, problems + more


class Predictor:
    """The network with validation's preprocessing, batch by batch."""

    def __init__(self, spec: EvalSpec) -> None:
        import torch

        from .networks import build_network
        from .training.augment import BatchTransform, TransformSpec

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads()))
        self.net = build_network(spec.network, spec.custom_code, tuple(spec.input_shape), spec.num_classes)  # type: ignore[arg-type]
        state = torch.load(spec.weights, map_location="cpu", weights_only=True)
        self.net.load_state_dict(state.get("model", state))
        self.net.eval()
        self.transform = BatchTransform(
            TransformSpec(crop_size=spec.crop_size or None, mean_subtraction=spec.mean_subtraction),
            np.load(spec.mean) if spec.mean else None,
            torch.device("cpu"),
        )

    def __call__(self, images: Any) -> np.ndarray:
        import torch

        with torch.no_grad():
            return torch.softmax(self.net(self.transform.eval(images)).float(), dim=1).numpy()


class Progress:
    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.started = self.last = time.monotonic()

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last > 0.5:
            self.last = now
            rate = self.done / (now - self.started)
            emit(protocol.Progress(progress=self.done / self.total, eta=(self.total - self.done) / rate, phase="evaluating"))


def _predict_split(spec: EvalSpec, predict: Predictor) -> tuple[np.ndarray, np.ndarray, dict[str, Any], Progress]:
    import torch

    from .training.data import Split, chunk

    split = Split(spec.db, cache_bytes=256 << 20, workers=0)
    count = len(split)
    if not count:
        raise ValueError("This split has no images.")
    probabilities = np.empty((count, spec.num_classes), dtype=np.float32)
    labels = np.empty(count, dtype=np.int64)
    progress = Progress(count)
    for images, targets in split.batches(chunk(torch.arange(count), spec.batch_size)):
        done = progress.done
        probabilities[done : done + len(targets)] = predict(images)
        labels[done : done + len(targets)] = targets.numpy()
        progress.advance(len(targets))
    return probabilities, labels, {}, progress


def _load(spec: EvalSpec, item: Input) -> np.ndarray | str:
    """The image at the dataset's size and mode (HxWxC uint8), or why it cannot be read."""
    try:
        img = resize_image(load_image(item.path, spec.channels), spec.width, spec.height, spec.resize_mode)
        return to_array(img)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this one file's problem, reported
        return f"not a readable image ({type(exc).__name__}: {exc})"


def _predict_files(spec: EvalSpec, predict: Predictor) -> tuple[np.ndarray, np.ndarray, dict[str, Any], Progress]:
    import torch

    inputs, problems = gather_inputs(spec)
    if not inputs:
        reasons = "; ".join(sorted({p.reason for p in problems})[:3])
        raise ValueError(f"No image to classify{': ' + reasons if reasons else ''}. Check the list's paths or the upload.")
    progress = Progress(len(inputs))
    kept: list[Input] = []
    chunks: list[np.ndarray] = []
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        for start in range(0, len(inputs), spec.batch_size):
            batch = inputs[start : start + spec.batch_size]
            arrays = []
            for item, loaded in zip(batch, pool.map(lambda i: _load(spec, i), batch)):
                if isinstance(loaded, str):
                    problems.append(Problem(loaded, item.name, item.line))
                else:
                    kept.append(item)
                    arrays.append(loaded)
            if arrays:
                chunks.append(predict(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)))
            progress.advance(len(batch))
    if not kept:
        raise ValueError("None of the images could be read; the evaluation's log lists each one.")
    problems.sort(key=lambda p: (p.line is None, p.line or 0, p.text))
    extra = {
        "names": np.array([i.name for i in kept], dtype=str),
        "files": np.array([i.path for i in kept], dtype=str),
        "problems": [p.as_dict() for p in problems[:MAX_PROBLEMS]],
        "problem_count": len(problems),
    }
    return np.concatenate(chunks), np.array([i.label for i in kept], dtype=np.int64), extra, progress


def evaluate(spec: EvalSpec) -> dict[str, Any]:
    from .metrics import summarise

    if spec.task != "classification":
        return _evaluate_spatial(spec)
    predict = Predictor(spec)
    if spec.source == "split":
        probabilities, labels, extra, progress = _predict_split(spec, predict)
    else:
        probabilities, labels, extra, progress = _predict_files(spec, predict)
    # The loop's rate: from the first image (the split opened, or the files listed) to the last.
    loop_seconds = time.monotonic() - progress.started
    out_dir = Path(spec.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Probabilities as float16 for the pages (mistakes, top-N); the metrics use float32.
    arrays = {k: v for k, v in extra.items() if isinstance(v, np.ndarray)}
    tmp = out_dir / (PREDICTIONS + ".tmp")
    with tmp.open("wb") as fh:
        np.savez(fh, probabilities=probabilities.astype(np.float16), labels=labels, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, out_dir / PREDICTIONS)
    # Accuracy, confusion, calibration and suspects over the images with ground truth;
    # positions map back to every image's.
    labeled = np.nonzero(labels != NO_LABEL)[0]
    result: dict[str, Any] = summarise(probabilities[labeled], labels[labeled])
    for suspect in result["suspects"]:
        suspect["position"] = int(labeled[suspect["position"]])
    result["images"] = int(len(labels))
    result["labeled"] = int(len(labeled))
    if not len(labeled):
        result["top1"] = result["top5"] = result["calibration"]["ece"] = None
    result["source"] = spec.source
    result.update({k: v for k, v in extra.items() if not isinstance(v, np.ndarray)})
    result["seconds"] = round(loop_seconds, 3)
    result["images_per_second"] = round(len(labels) / max(loop_seconds, 1e-9), 1)
    return result


def _evaluate_spatial(spec: EvalSpec) -> dict[str, Any]:
    from .evaluate_spatial import evaluate_detection, evaluate_segmentation

    out_dir = Path(spec.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    run = evaluate_segmentation if spec.task == "segmentation" else evaluate_detection
    result = run(spec, Progress, out_dir, PREDICTIONS)
    seconds = time.monotonic() - started
    result.update(source=spec.source, seconds=round(seconds, 3), images_per_second=round(result["images"] / max(seconds, 1e-9), 1))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        spec = EvalSpec.from_dict(json.loads(args.spec.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        emit(protocol.Error(message=f"The evaluation spec {args.spec} cannot be read: {exc}"))
        return 1
    try:
        result = evaluate(spec)
    except Exception as exc:  # noqa: BLE001 - reported to the user with its reason; the traceback goes to the log
        import traceback

        traceback.print_exc()
        from .networks import describe_code_error

        error = describe_code_error(exc, "The evaluation failed") if spec.network == "custom" else exc
        emit(protocol.Error(message=str(error)))
        return 1
    emit(protocol.Result(data=result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
