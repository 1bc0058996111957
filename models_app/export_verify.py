"""Export a snapshot and check each export against PyTorch: the child process of an export
job (the kind is in models_app/kind.py, the services in models_app/exports.py).

    python -m models_app.export_verify --spec /path/to/spec.json

Writes into the job's folder:
  - `model.pt`: the network's weights alone (the state_dict the archive ships);
  - `model.onnx`: `torch.onnx.export(..., dynamo=True)` with a dynamic batch dimension;
  - `model.pt2`: `torch.export.export` with the same dynamic batch, saved with torch.export.save.

Each export is then run on images of the dataset (validation's preprocessing) and compared
with the eager network on the same inputs: the largest absolute difference of the outputs
(allowed: `tolerance`, scaled by the outputs' magnitude when it exceeds 1, so a network
whose logits are in the hundreds is held to the same relative precision), top-1 agreement
(must be 100 %), and latency at batch 1 (`warmup` runs, then the p50 and p95 of `runs`).
The verification batch goes through whole, so the dynamic batch is exercised too.

A detector (torchvision's: a list of images in, per image boxes, labels and scores out,
with its own post-processing and non-maximum suppression) is exported to ONNX only, one
image at a time (input "input", 1 x C x H x W; outputs "boxes" (K x 4, in the input's
pixels), "labels" (K, counted from 1: 0 is the background) and "scores" (K)), by the
TorchScript exporter, which keeps its data-dependent post-processing. It is verified image
by image: the detections at least `agree_score` sure must be the same objects (count and
classes; that is the agreement), their boxes and scores within the tolerance.

A format that fails to export or to verify is reported with its error and its file is
removed: only checked files are offered for download. JSON lines on stdout (workers/protocol.py).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from workers import protocol
from workers.protocol import spec_from_dict

if TYPE_CHECKING:
    import torch

WEIGHTS = "model.pt"
FILES = {"onnx": "model.onnx", "pt2": "model.pt2"}
INPUT_NAME, OUTPUT_NAME = "input", "logits"
DETECTION_OUTPUTS = ("boxes", "labels", "scores")


@dataclass(frozen=True)
class ExportSpec:
    output_dir: str = ""
    weights: str = ""  # the snapshot's file
    network: str = "lenet"
    custom_code: str = ""
    input_shape: tuple[int, ...] = ()  # (C, H, W) the network takes (after any crop)
    num_classes: int = 0
    db: str = ""  # the split whose images verify the exports
    mean: str = ""
    crop_size: int = 0
    mean_subtraction: str = "image"
    formats: tuple[str, ...] = ("onnx", "pt2")
    images: int = 64  # how many images of the split verify each export
    tolerance: float = 1e-4
    warmup: int = 10
    runs: int = 100
    task: str = "classification"
    agree_score: float = 0.3  # detection: the detections compared (what the archive's script shows)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportSpec:
        return spec_from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FormatResult:
    format: str
    status: str = "failed"  # passed | failed | reference (PyTorch itself)
    file: str = ""
    bytes: int = 0
    export_seconds: float | None = None
    max_abs_diff: float | None = None
    tolerance: float | None = None
    top1_agreement: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    error: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def emit(event: protocol.Event) -> None:
    protocol.emit(event)
    sys.stdout.flush()


def latency(run: Callable[[], object], warmup: int, runs: int) -> tuple[float, float]:
    """(p50, p95) of `runs` calls in milliseconds, after `warmup` calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(max(1, runs)):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def compare(reference: np.ndarray, output: np.ndarray, tolerance: float) -> tuple[float, float, float]:
    """(max abs difference, the tolerance it is held to, top-1 agreement)."""
    if output.shape != reference.shape:
        raise ValueError(f"outputs have shape {list(output.shape)}, PyTorch's {list(reference.shape)}")
    diff = float(np.abs(output.astype(np.float64) - reference).max())
    allowed = tolerance * max(1.0, float(np.abs(reference).max()))
    agreement = float((output.argmax(axis=1) == reference.argmax(axis=1)).mean())
    return diff, allowed, agreement


def short_error(exc: BaseException) -> str:
    """The exception's first lines: exporters' messages run to pages of graph dumps."""
    text = f"{type(exc).__name__}: {exc}".strip()
    lines = [line for line in text.splitlines() if line.strip()]
    message = "\n".join(lines[:6])
    return message[:1500] + ("…" if len(message) > 1500 or len(lines) > 6 else "")


def _inputs(spec: ExportSpec) -> torch.Tensor:
    import torch

    from .training.augment import BatchTransform, TransformSpec
    from .training.data import Split, chunk

    split = Split(spec.db, cache_bytes=64 << 20, workers=0)
    count = min(len(split), spec.images)
    if count == 0:
        raise ValueError("The dataset split has no images to verify the exports with.")
    transform = BatchTransform(
        TransformSpec(crop_size=spec.crop_size or None, mean_subtraction=spec.mean_subtraction),
        np.load(spec.mean) if spec.mean else None,
        torch.device("cpu"),
    )
    # Spread over the split (its records are in class order when it was built from folders).
    picks = torch.linspace(0, len(split) - 1, count).round().long().unique()
    images, _ = next(iter(split.batches(chunk(picks, len(picks)))))
    return transform.eval(images).contiguous()


def export_onnx(net: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    import torch

    batch = torch.export.Dim("batch", min=1, max=65_536)
    torch.onnx.export(
        net, (example,), str(path), dynamo=True, dynamic_shapes=({0: batch},),
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False,
        external_data=False,  # one self-contained file (weights inside), what a download expects
    )


def export_pt2(net: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    import torch

    batch = torch.export.Dim("batch", min=1, max=65_536)
    program = torch.export.export(net, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


def onnx_runner(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def pt2_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    module = torch.export.load(str(path)).module()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).float().numpy()

    return run


def keep_if_checked(partial: Path, final: Path, result: FormatResult, problems: list[str]) -> None:
    """A format that passed every check becomes its final file; else the problems are its error."""
    if problems:
        raise ValueError("; ".join(problems))
    os.replace(partial, final)
    result.bytes = final.stat().st_size
    result.status = "passed"


@contextlib.contextmanager
def one_format(partial: Path, final: Path, result: FormatResult) -> Iterator[None]:
    """Export and check one format: any failure is that format's error (the others go on),
    and only a checked file stays."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - reported per format, with its reason
        traceback.print_exc()
        result.error = short_error(exc)
        result.status = "failed"
        final.unlink(missing_ok=True)
    finally:
        partial.unlink(missing_ok=True)


def detector_outputs(net: torch.nn.Module) -> torch.nn.Module:
    """A torchvision detector as a network of one tensor in (one image), three tensors out."""
    import torch

    class DetectorOutputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            found = self.net(list(x))[0]
            return found["boxes"], found["labels"], found["scores"]

    return DetectorOutputs().eval()


def export_detector_onnx(net: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    import torch

    torch.onnx.export(
        detector_outputs(net), (example[:1],), str(path), dynamo=False, opset_version=17,
        input_names=[INPUT_NAME], output_names=list(DETECTION_OUTPUTS),
        dynamic_axes={name: {0: "objects"} for name in DETECTION_OUTPUTS},
    )


def compare_detections(
    reference: list[tuple[np.ndarray, ...]], outputs: list[tuple[np.ndarray, ...]], agree_score: float,
) -> tuple[float, float, float, float]:
    """(the largest difference of the boxes compared, the largest box coordinate, the
    largest difference of their scores, the share of images whose detections at least
    `agree_score` sure are the same objects in the same order)."""
    box_diff = score_diff = 0.0
    largest, agree = 1.0, 0
    for (boxes, labels, scores), (o_boxes, o_labels, o_scores) in zip(reference, outputs):
        keep, o_keep = scores >= agree_score, o_scores >= agree_score
        if keep.sum() != o_keep.sum() or not np.array_equal(labels[keep], o_labels[o_keep]):
            continue
        agree += 1
        if keep.any():
            largest = max(largest, float(np.abs(boxes[keep]).max()))
            box_diff = max(box_diff, float(np.abs(boxes[keep] - o_boxes[o_keep]).max()))
            score_diff = max(score_diff, float(np.abs(scores[keep] - o_scores[o_keep]).max()))
    return box_diff, largest, score_diff, agree / max(1, len(reference))


def verify_detector(spec: ExportSpec, net: torch.nn.Module, inputs: torch.Tensor, out_dir: Path, threads: int,
                    results: dict[str, FormatResult]) -> None:
    """The ONNX export of a detector, checked image by image (see the module's docstring)."""
    import torch

    import onnxruntime as ort

    images = inputs[: min(len(inputs), 16)]  # one at a time: a few dozen seconds at most
    wrapped = detector_outputs(net)
    with torch.no_grad():
        reference = [tuple(t.float().numpy() if t.is_floating_point() else t.numpy() for t in wrapped(x[None]))
                     for x in images]
        one = images[:1]
        results["pytorch"].p50_ms, results["pytorch"].p95_ms = latency(lambda: net(list(one)), spec.warmup, spec.runs)
    result = results["onnx"] = FormatResult("onnx", file=FILES["onnx"])
    final = out_dir / FILES["onnx"]
    partial = out_dir / (FILES["onnx"] + ".tmp.onnx")
    started = time.monotonic()
    with one_format(partial, final, result):
        export_detector_onnx(net, images, partial)
        result.export_seconds = round(time.monotonic() - started, 3)
        emit(protocol.Progress(progress=0.6, phase="verifying onnx"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(partial), options, providers=["CPUExecutionProvider"])
        outputs = [tuple(session.run(list(DETECTION_OUTPUTS), {INPUT_NAME: x[None].numpy()})) for x in images]
        box_diff, largest, score_diff, result.top1_agreement = compare_detections(reference, outputs, spec.agree_score)
        # Boxes go through more arithmetic than logits (anchors, regression, NMS): ten
        # times the tolerance, in pixels relative to the largest coordinate; scores are
        # probabilities, held to it without scaling.
        result.max_abs_diff, result.tolerance = box_diff, spec.tolerance * 10 * largest
        score_tolerance = spec.tolerance * 10
        single = images[:1].numpy()
        result.p50_ms, result.p95_ms = latency(lambda: session.run(None, {INPUT_NAME: single}), spec.warmup, spec.runs)
        result.details = {"images": len(images), "agree_score": spec.agree_score, "score_diff": score_diff,
                          "score_tolerance": score_tolerance,
                          "objects": int(sum((r[2] >= spec.agree_score).sum() for r in reference))}
        problems = []
        if result.top1_agreement < 1:
            problems.append(f"the detections agree with PyTorch's on {result.top1_agreement:.1%} of the images, not all")
        if result.max_abs_diff > result.tolerance:
            problems.append(f"boxes differ from PyTorch's by {result.max_abs_diff:.3g} px (allowed {result.tolerance:.3g})")
        if score_diff > score_tolerance:
            problems.append(f"scores differ from PyTorch's by {score_diff:.3g} (allowed {score_tolerance:.3g})")
        keep_if_checked(partial, final, result, problems)


def export_and_verify(spec: ExportSpec) -> dict[str, Any]:
    import torch

    from .networks import build_network

    threads = int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads())
    torch.set_num_threads(threads)
    out_dir = Path(spec.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    emit(protocol.Progress(progress=0.0, phase="loading"))
    net = build_network(spec.network, spec.custom_code, tuple(spec.input_shape), spec.num_classes)  # type: ignore[arg-type]
    checkpoint = torch.load(spec.weights, map_location="cpu", weights_only=True)
    state = checkpoint.get("model", checkpoint)
    net.load_state_dict(state)
    net.eval()
    tmp = out_dir / (WEIGHTS + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out_dir / WEIGHTS)

    inputs = _inputs(spec)
    x = inputs.numpy()
    if spec.task == "detection":
        found: dict[str, FormatResult] = {"pytorch": FormatResult("pytorch", status="reference", file=WEIGHTS, bytes=(out_dir / WEIGHTS).stat().st_size)}
        emit(protocol.Progress(progress=0.1, phase="exporting onnx"))
        verify_detector(spec, net, inputs, out_dir, threads, found)
        return {"formats": {name: asdict(r) for name, r in found.items()}, "images": found["onnx"].details.get("images", 0),
                "threads": threads, "torch": torch.__version__, "warmup": spec.warmup, "runs": spec.runs}
    with torch.no_grad():
        reference = net(inputs).float().numpy().astype(np.float64)
        one = inputs[:1]
        p50, p95 = latency(lambda: net(one), spec.warmup, spec.runs)
    results: dict[str, FormatResult] = {
        "pytorch": FormatResult("pytorch", status="reference", file=WEIGHTS, bytes=(out_dir / WEIGHTS).stat().st_size,
                                p50_ms=p50, p95_ms=p95)
    }
    steps = len(spec.formats)
    for n, fmt in enumerate(spec.formats):
        emit(protocol.Progress(progress=(n + 0.1) / (steps + 0.1), phase=f"exporting {fmt}"))
        result = results[fmt] = FormatResult(fmt, file=FILES[fmt], tolerance=None)
        final = out_dir / FILES[fmt]
        partial = out_dir / (FILES[fmt] + ".tmp" + final.suffix)  # exporters look at the suffix
        started = time.monotonic()
        with one_format(partial, final, result):
            if fmt == "onnx":
                export_onnx(net, inputs[:2], partial)
                run = onnx_runner(partial, threads)
            else:
                export_pt2(net, inputs[:2], partial)
                run = pt2_runner(partial)
            result.export_seconds = round(time.monotonic() - started, 3)
            emit(protocol.Progress(progress=(n + 0.6) / (steps + 0.1), phase=f"verifying {fmt}"))
            output = np.asarray(run(x))
            result.max_abs_diff, result.tolerance, result.top1_agreement = compare(reference, output, spec.tolerance)
            single = x[:1]
            result.p50_ms, result.p95_ms = latency(lambda: run(single), spec.warmup, spec.runs)  # noqa: B023 - used at once
            problems = []
            if result.max_abs_diff > result.tolerance:
                problems.append(f"outputs differ from PyTorch by {result.max_abs_diff:.3g} (allowed {result.tolerance:.3g})")
            if result.top1_agreement < 1:
                problems.append(f"top-1 agrees with PyTorch on {result.top1_agreement:.1%} of the images, not all")
            keep_if_checked(partial, final, result, problems)
    return {
        "formats": {name: asdict(r) for name, r in results.items()},
        "images": len(x),
        "threads": threads,
        "torch": torch.__version__,
        "warmup": spec.warmup,
        "runs": spec.runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        spec = ExportSpec.from_dict(json.loads(args.spec.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        emit(protocol.Error(message=f"The export spec {args.spec} cannot be read: {exc}"))
        return 1
    try:
        result = export_and_verify(spec)
    except Exception as exc:  # noqa: BLE001 - reported to the user with its reason; the traceback goes to the log
        traceback.print_exc()
        from .networks import describe_code_error

        error = describe_code_error(exc, "The export failed") if spec.network == "custom" else exc
        emit(protocol.Error(message=str(error)))
        return 1
    emit(protocol.Result(data=result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
