#!/usr/bin/env python3
"""Classify images with this exported model.

    python classify.py IMAGE [IMAGE ...] [--top 5] [--json] [--runtime auto|torch|onnx] [--out FOLDER]

A segmentation model (info.json "task") gives a class per pixel: each image's class map is
written as IMAGE_labels.png (in FOLDER with --out), in the classes' colours, and the share
of the pixels of each class found is printed. A detection model prints each object found
(class, score, box in the resized image's pixels) and writes the image with its boxes as
IMAGE_boxes.png; --min-score sets how sure (default 0.3).

Two runtimes, same preprocessing (imaging.py, the code used in training) and same answers:
  - torch: model.pt (weights) with network.py (`build(input_shape, num_classes)`);
  - onnx: model.onnx with onnxruntime alone, no torch (present when the export passed
    its check against PyTorch; see info.json "exports").
`auto` uses torch when it is installed, else onnxruntime. Also here: labels.txt, mean.npy.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import imaging  # noqa: E402


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def load_torch(info: dict) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    import network

    net = network.build(tuple(info["input_shape"]), info["num_classes"])
    net.load_state_dict(torch.load(HERE / "model.pt", map_location="cpu", weights_only=True))
    net.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(x)).float().numpy()

    return run


def load_onnx(info: dict) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    if not (HERE / "model.onnx").exists():
        raise SystemExit("This archive has no model.onnx (its ONNX export did not pass, or was not made): use --runtime torch.")
    session = ort.InferenceSession(str(HERE / "model.onnx"), providers=["CPUExecutionProvider"])
    names = info.get("onnx") or {"input": session.get_inputs()[0].name, "output": session.get_outputs()[0].name}
    return lambda x: session.run([names["output"]], {names["input"]: x})[0]


def preprocess(path: str, info: dict, mean: np.ndarray | None) -> np.ndarray:
    """The (1, C, H, W) float32 input: resize, mean subtraction, centre crop, / 255."""
    channels, height, width = info["input_shape"]
    crop = info.get("crop_size")
    size_w, size_h = (info["image_width"], info["image_height"]) if crop else (width, height)
    img = imaging.resize_image(imaging.load_image(path, channels), size_w, size_h, info["resize_mode"])
    x = imaging.to_array(img).astype(np.float32)
    mode = info.get("mean_subtraction", "image")
    if mean is not None and mode == "image":
        x -= mean.astype(np.float32)
    elif mean is not None and mode == "pixel":
        x -= mean.astype(np.float32).mean(axis=(0, 1))
    if crop:  # the centre crop validation used
        y0, x0 = (x.shape[0] - crop) // 2, (x.shape[1] - crop) // 2
        x = x[y0 : y0 + crop, x0 : x0 + crop]
    return np.ascontiguousarray((x / 255.0).transpose(2, 0, 1), dtype=np.float32)[None]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max())
    return z / z.sum()


def load_detector(info: dict, runtime: str) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(1, C, H, W) input -> (boxes, labels counted from 1, scores): the torchvision
    detector itself, or its ONNX export."""
    if runtime == "onnx":
        import onnxruntime as ort

        if not (HERE / "model.onnx").exists():
            raise SystemExit("This archive has no model.onnx (its ONNX export did not pass, or was not made): use --runtime torch.")
        session = ort.InferenceSession(str(HERE / "model.onnx"), providers=["CPUExecutionProvider"])
        names = (info.get("onnx") or {}).get("outputs") or ["boxes", "labels", "scores"]
        return lambda x: tuple(session.run(names, {(info.get("onnx") or {}).get("input", "input"): x}))  # type: ignore[return-value]
    import torch

    import network

    net = network.build(tuple(info["input_shape"]), info["num_classes"])
    net.load_state_dict(torch.load(HERE / "model.pt", map_location="cpu", weights_only=True))
    net.eval()

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with torch.no_grad():
            (found,) = net(list(torch.from_numpy(x)))
        return found["boxes"].numpy(), found["labels"].numpy(), found["scores"].numpy()

    return run


def detect(path: str, found: tuple[np.ndarray, np.ndarray, np.ndarray], info: dict, labels: list[str], out: str | None,
           min_score: float) -> dict:
    """The objects found in one image (boxes, labels counted from 1, scores), and the
    image with their boxes drawn."""
    from PIL import ImageDraw

    boxes, classes, scores = found
    objects = [
        {"label": labels[int(c) - 1], "score": float(s), "box": [round(float(v), 2) for v in b]}
        # Label 0 is the background (sigmoid-scored detectors can still return it): not an object.
        for b, c, s in zip(boxes, classes, scores) if float(s) >= min_score and int(c) > 0
    ]
    channels, height, width = info["input_shape"]
    image = imaging.resize_image(imaging.load_image(path, channels), width, height, info["resize_mode"]).convert("RGB")
    draw = ImageDraw.Draw(image)
    for o in objects:
        draw.rectangle(o["box"], outline=(255, 40, 40))
    target = Path(out or Path(path).parent) / (Path(path).stem + "_boxes.png")
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target)
    return {"objects": objects, "boxes_png": str(target)}


def segment(path: str, logits: np.ndarray, info: dict, labels: list[str], out: str | None) -> dict:
    """Each pixel's class, saved as a PNG in the classes' colours; each class's share."""
    from PIL import Image

    ids = logits[0].argmax(axis=0).astype(np.uint8)
    colours = np.zeros((256, 3), dtype=np.uint8)
    colours[: len(info["label_colours"])] = np.asarray(info["label_colours"], dtype=np.uint8)
    target = Path(out or Path(path).parent) / (Path(path).stem + "_labels.png")
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(colours[ids]).save(target)
    counts = np.bincount(ids.reshape(-1), minlength=len(labels))
    found = [i for i in np.argsort(-counts) if counts[i]]
    return {"labels_png": str(target),
            "classes": [{"label": labels[i], "share": float(counts[i] / ids.size), "pixels": int(counts[i])} for i in found]}


def main() -> int:
    parser = argparse.ArgumentParser(description="Classify images with the exported model.")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")
    parser.add_argument("--runtime", choices=["auto", "torch", "onnx"], default="auto")
    parser.add_argument("--out", help="segmentation and detection: the folder for the pictures (default: next to each image)")
    parser.add_argument("--min-score", type=float, default=0.3, help="detection: the objects at least this sure")
    args = parser.parse_args()
    info = json.loads((HERE / "info.json").read_text())
    labels = (HERE / "labels.txt").read_text().splitlines()
    mean_path = HERE / "mean.npy"
    mean = np.load(mean_path) if mean_path.exists() else None
    runtime = args.runtime if args.runtime != "auto" else ("torch" if torch_available() else "onnx")
    if info.get("task") == "detection":
        find = load_detector(info, runtime)
        for path in args.images:
            result = detect(path, find(preprocess(path, info, mean)), info, labels, args.out, args.min_score)
            if args.json:
                print(json.dumps({"image": path, "runtime": runtime, **result}))
            else:
                print(f"{path} -> {result['boxes_png']}")
                for o in result["objects"]:
                    print(f"  {o['score'] * 100:6.2f}%  {o['label']}  {o['box']}")
        return 0
    run = load_torch(info) if runtime == "torch" else load_onnx(info)
    for path in args.images:
        if info.get("task") == "segmentation":
            result = segment(path, np.asarray(run(preprocess(path, info, mean))), info, labels, args.out)
            if args.json:
                print(json.dumps({"image": path, "runtime": runtime, **result}))
            else:
                print(f"{path} -> {result['labels_png']}")
                for c in result["classes"]:
                    print(f"  {c['share'] * 100:6.2f}%  {c['label']}")
            continue
        probs = softmax(np.asarray(run(preprocess(path, info, mean)), dtype=np.float64)[0])
        order = np.argsort(-probs)[: min(args.top, len(probs))]
        results = [{"label": labels[i], "probability": float(probs[i])} for i in order]
        if args.json:
            print(json.dumps({"image": path, "runtime": runtime, "predictions": results}))
        else:
            print(path)
            for r in results:
                print(f"  {r['probability'] * 100:6.2f}%  {r['label']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
