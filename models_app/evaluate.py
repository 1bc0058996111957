"""Evaluate a snapshot on a dataset split: the child process of an evaluation job.

    python -m models_app.evaluate --spec /path/to/spec.json

Runs every image of the split through the network with validation's preprocessing (mean
subtraction, centre crop), writes `predictions.npz` into the job's folder (each image's
probabilities for every class, and its given label) and reports the metrics
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

import numpy as np

from workers import protocol
from workers.protocol import spec_from_dict

PREDICTIONS = "predictions.npz"


@dataclass(frozen=True)
class EvalSpec:
    output_dir: str = ""
    weights: str = ""  # the snapshot's file
    network: str = "lenet"
    custom_code: str = ""
    input_shape: tuple[int, ...] = ()  # (C, H, W) the network takes (after any crop)
    num_classes: int = 0
    db: str = ""  # the split's LMDB
    mean: str = ""  # mean.npy
    crop_size: int = 0
    mean_subtraction: str = "image"
    batch_size: int = 64

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalSpec:
        return spec_from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def emit(event: protocol.Event) -> None:
    protocol.emit(event)
    sys.stdout.flush()


def evaluate(spec: EvalSpec) -> dict[str, Any]:
    import torch

    from .metrics import summarise
    from .networks import build_network
    from .training.augment import BatchTransform, TransformSpec
    from .training.data import Split, chunk

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads()))
    split = Split(spec.db, cache_bytes=256 << 20, workers=0)
    if not len(split):
        raise ValueError("This split has no images.")
    net = build_network(spec.network, spec.custom_code, tuple(spec.input_shape), spec.num_classes)  # type: ignore[arg-type]
    state = torch.load(spec.weights, map_location="cpu", weights_only=True)
    net.load_state_dict(state.get("model", state))
    net.eval()
    transform = BatchTransform(
        TransformSpec(crop_size=spec.crop_size or None, mean_subtraction=spec.mean_subtraction),
        np.load(spec.mean) if spec.mean else None,
        torch.device("cpu"),
    )
    count = len(split)
    probabilities = np.empty((count, spec.num_classes), dtype=np.float32)
    labels = np.empty(count, dtype=np.int64)
    done = 0
    started = last = time.monotonic()
    with torch.no_grad():
        for images, targets in split.batches(chunk(torch.arange(count), spec.batch_size)):
            out = torch.softmax(net(transform.eval(images)).float(), dim=1)
            probabilities[done : done + len(targets)] = out.numpy()
            labels[done : done + len(targets)] = targets.numpy()
            done += len(targets)
            now = time.monotonic()
            if now - last > 0.5:
                last = now
                rate = done / (now - started)
                emit(protocol.Progress(progress=done / count, eta=(count - done) / rate, phase="evaluating"))
    out_dir = Path(spec.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Probabilities as float16 for the pages (mistakes, top-N); the metrics use float32.
    tmp = out_dir / (PREDICTIONS + ".tmp")
    with tmp.open("wb") as fh:
        np.savez(fh, probabilities=probabilities.astype(np.float16), labels=labels)
    os.replace(tmp, out_dir / PREDICTIONS)
    result = summarise(probabilities, labels)
    result["seconds"] = round(time.monotonic() - started, 3)
    result["images_per_second"] = round(count / max(time.monotonic() - started, 1e-9), 1)
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
