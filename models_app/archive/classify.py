#!/usr/bin/env python3
"""Classify images with this exported model, using torch, numpy and Pillow only.

    python classify.py IMAGE [IMAGE ...] [--top 5] [--json]

Files beside this script: model.pt (weights), network.py (the network definition, with
`build(input_shape, num_classes)`), imaging.py (the exact preprocessing used in training),
labels.txt, mean.npy and info.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import imaging  # noqa: E402
import network  # noqa: E402


def load() -> tuple[torch.nn.Module, dict, list[str], np.ndarray | None]:
    info = json.loads((HERE / "info.json").read_text())
    labels = (HERE / "labels.txt").read_text().splitlines()
    net = network.build(tuple(info["input_shape"]), info["num_classes"])
    net.load_state_dict(torch.load(HERE / "model.pt", map_location="cpu", weights_only=True))
    net.eval()
    mean_path = HERE / "mean.npy"
    return net, info, labels, np.load(mean_path) if mean_path.exists() else None


def classify(path: str, net: torch.nn.Module, info: dict, labels: list[str], mean: np.ndarray | None, top: int) -> list[dict]:
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
    x = torch.from_numpy(np.ascontiguousarray((x / 255.0).transpose(2, 0, 1)))[None]
    with torch.no_grad():
        probs = torch.softmax(net(x), dim=1)[0]
    values, indices = probs.topk(min(top, probs.numel()))
    return [{"label": labels[i], "probability": float(p)} for p, i in zip(values.tolist(), indices.tolist())]


def main() -> int:
    parser = argparse.ArgumentParser(description="Classify images with the exported model.")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")
    args = parser.parse_args()
    net, info, labels, mean = load()
    for path in args.images:
        results = classify(path, net, info, labels, mean, args.top)
        if args.json:
            print(json.dumps({"image": path, "predictions": results}))
        else:
            print(path)
            for r in results:
                print(f"  {r['probability'] * 100:6.2f}%  {r['label']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
