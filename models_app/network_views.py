"""What a network does with one input: its probabilities and, on request, a look inside.

Per layer (as DIGITS' "show visualizations and statistics"): output shape, parameter
count, weight tiles, activation tiles for this image, and the mean, std and a 20-bin
histogram of the weights and of the activations; plus a Grad-CAM map (captum's
LayerGradCam) of what drove the top prediction, over the image the network saw.

Pure torch, NumPy and Pillow, no Django: the inference worker (models_app/inference.py)
and the sandbox child that runs custom network code (models_app/sandbox.py) both use it.
"""
from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np
import torch
from PIL import Image

from .training.augment import centre_crop

MAX_TILES = 32  # per layer: enough to see what a layer does, small enough to send
TILE_SIDE = 32  # tiles are scaled up (nearest) to at least this many pixels
HISTOGRAM_BINS = 20


def png_uri(pixels: np.ndarray) -> str:
    """An HxW or HxWx3 (or HxWx1) uint8 array as a data: URI."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Min-max scaled to 0-255 (a constant array becomes mid-grey)."""
    values = values.astype(np.float32)
    low, high = float(values.min()), float(values.max())
    if not math.isfinite(low) or not math.isfinite(high) or high - low < 1e-12:
        return np.full(values.shape, 128, dtype=np.uint8)
    return ((values - low) * (255.0 / (high - low))).round().astype(np.uint8)


def tile_grid(tiles: np.ndarray, *, each: bool = True) -> str:
    """(N, H, W) or (N, H, W, 3) values as one grid picture, each tile scaled on its own
    (`each`) or all together, scaled up with nearest neighbours to TILE_SIDE."""
    count = len(tiles)
    scaled = np.stack([_to_uint8(t) for t in tiles]) if each else _to_uint8(tiles)
    height, width = scaled.shape[1:3]
    zoom = max(1, math.ceil(TILE_SIDE / max(height, width)))
    if zoom > 1:
        scaled = scaled.repeat(zoom, axis=1).repeat(zoom, axis=2)
        height, width = height * zoom, width * zoom
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    gap = 2
    shape = (rows * (height + gap) - gap, columns * (width + gap) - gap, *scaled.shape[3:])
    grid = np.full(shape, 255, dtype=np.uint8)
    for index, tile in enumerate(scaled):
        r, c = divmod(index, columns)
        grid[r * (height + gap) : r * (height + gap) + height, c * (width + gap) : c * (width + gap) + width] = tile
    return png_uri(grid)


def statistics(values: torch.Tensor) -> dict[str, Any]:
    """Mean, std, min, max and a 20-bin histogram (DIGITS showed the same per layer)."""
    flat = values.detach().float().flatten()
    flat = flat[torch.isfinite(flat)]
    if flat.numel() == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "histogram": {"counts": [], "edges": []}}
    low, high = float(flat.min()), float(flat.max())
    if high <= low:
        high = low + 1e-6
    counts = torch.histc(flat, bins=HISTOGRAM_BINS, min=low, max=high)
    return {
        "mean": float(flat.mean()),
        "std": float(flat.std()) if flat.numel() > 1 else 0.0,
        "min": low,
        "max": high,
        "histogram": {
            "counts": [int(c) for c in counts.tolist()],
            "edges": [low + (high - low) * i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS + 1)],
        },
    }


def _weight_tiles(weight: torch.Tensor) -> str | None:
    """Convolution filters as tiles: in colour when they read 3 channels (the first layer),
    else each filter's first input channel."""
    w = weight.detach().float().cpu()
    if w.dim() != 4 or min(w.shape[2:]) < 2:
        return None
    w = w[:MAX_TILES]
    if w.shape[1] == 3:
        # One scale for all the colour filters, so their strengths compare.
        return tile_grid(w.permute(0, 2, 3, 1).numpy(), each=False)
    return tile_grid(w[:, 0].numpy())


def _activation_tiles(output: torch.Tensor) -> str | None:
    """Feature maps (C, H, W) as tiles; a vector as one square picture."""
    a = output.detach().float().cpu()[0]
    if a.dim() == 3 and min(a.shape[1:]) >= 2:
        return tile_grid(a[:MAX_TILES].numpy())
    flat = a.flatten().numpy()
    if flat.size < 2:
        return None
    side = math.ceil(math.sqrt(flat.size))
    square = np.full(side * side, flat.min(), dtype=np.float32)
    square[: flat.size] = flat
    return tile_grid(square.reshape(1, side, side))


def _leaf_modules(net: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [(name, module) for name, module in net.named_modules() if name and not list(module.children())]


def output_shape(value: Any) -> list[int] | None:
    """The shape of a layer's output (the first tensor of a tuple or list)."""
    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, (tuple, list)) and value:
        return output_shape(value[0])
    return None


def _grad_cam(net: torch.nn.Module, x: torch.Tensor, target: int, picture: np.ndarray) -> dict[str, Any] | None:
    """Grad-CAM (captum's LayerGradCam) on the last convolution: which parts of the image
    raised the score of `target`, over the image the network saw."""
    from captum.attr import LayerAttribution, LayerGradCam
    from matplotlib import colormaps

    convolutions = [(name, m) for name, m in _leaf_modules(net) if isinstance(m, torch.nn.Conv2d)]
    if not convolutions:
        return None
    name, layer = convolutions[-1]
    with torch.enable_grad():
        attribution = LayerGradCam(net, layer).attribute(x.clone().requires_grad_(True), target=target)
    heat = LayerAttribution.interpolate(attribution, tuple(x.shape[-2:]), interpolate_mode="bilinear")[0, 0]
    heat = torch.relu(heat).detach().numpy()
    if heat.max() > 0:
        heat = heat / heat.max()
    colours = (colormaps["jet"](heat)[:, :, :3] * 255).astype(np.float32)
    base = picture.astype(np.float32)
    if base.shape[2] == 1:
        base = base.repeat(3, axis=2)
    overlay = (0.55 * base + 0.45 * colours).clip(0, 255).astype(np.uint8)
    return {"layer": name, "overlay": png_uri(overlay), "heatmap": png_uri((heat * 255).astype(np.uint8))}


# Detections shown and returned: those at least this sure.
DETECTION_SCORE = 0.3


def analyse(
    net: torch.nn.Module, x: torch.Tensor, resized: np.ndarray, *, crop_size: int | None, views: bool, task: str = "classification",
) -> dict[str, Any]:
    """Probabilities of every class for the (1, C, H, W) input `x`; with `views`, the
    pictures and statistics of every layer and the Grad-CAM map as well.
    Segmentation: instead of probabilities, each pixel's class ("label_ids", an HxW uint8
    array as a list of rows) and its probability's mean per class ("confidence")."""
    net.eval()
    if task == "detection":  # a list of {boxes, labels, scores}; no per-layer views of a detector yet
        with torch.no_grad():
            (found,) = net(list(x))
        keep = (found["scores"] >= DETECTION_SCORE) & (found["labels"] > 0)  # 0: the background
        return {
            "input": {"resized": png_uri(resized), "network": png_uri(_to_uint8(x[0].permute(1, 2, 0).numpy()))},
            "detections": [
                {"box": [round(float(v), 2) for v in box], "index": int(label) - 1, "score": float(score)}
                for box, label, score in zip(found["boxes"][keep], found["labels"][keep], found["scores"][keep])
            ],
        }
    seen = centre_crop(torch.from_numpy(resized).permute(2, 0, 1), crop_size).permute(1, 2, 0).numpy() if crop_size else resized
    reply: dict[str, Any] = {
        "input": {"resized": png_uri(resized), "network": png_uri(_to_uint8(x[0].permute(1, 2, 0).numpy()))}
    }
    captured: list[tuple[str, torch.nn.Module, Any]] = []
    hooks = []
    if views:
        for name, module in _leaf_modules(net):

            def hook(mod: torch.nn.Module, inputs: Any, output: Any, name: str = name) -> None:
                # A copy: a later in-place layer (ReLU(inplace=True)) would change it.
                captured.append((name, mod, output.detach().clone() if isinstance(output, torch.Tensor) else output))

            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            probabilities = torch.softmax(net(x).float(), dim=1)[0]
    finally:
        for h in hooks:
            h.remove()
    if task == "segmentation":
        best, ids = probabilities.max(dim=0)
        classes = probabilities.shape[0]
        sums = torch.zeros(classes).index_add_(0, ids.reshape(-1), best.reshape(-1))
        counts = torch.bincount(ids.reshape(-1), minlength=classes).clamp(min=1)
        reply["label_ids"] = ids.to(torch.uint8).tolist()
        reply["confidence"] = (sums / counts).tolist()
    else:
        reply["probabilities"] = probabilities.tolist()
    if not views:
        return reply
    layers = []
    for name, module, output in captured:
        weight = getattr(module, "weight", None)
        tensor = output if isinstance(output, torch.Tensor) else None
        layers.append({
            "name": name,
            "type": type(module).__name__,
            "output_shape": output_shape(output),
            "params": sum(p.numel() for p in module.parameters(recurse=False)),
            "weights": statistics(weight) if isinstance(weight, torch.Tensor) else None,
            "weight_tiles": _weight_tiles(weight) if isinstance(weight, torch.Tensor) else None,
            "activations": statistics(tensor) if tensor is not None else None,
            "activation_tiles": _activation_tiles(tensor) if tensor is not None else None,
        })
    reply["layers"] = layers
    reply["total_params"] = sum(p.numel() for p in net.parameters())
    if task != "segmentation":  # a map of what raised one class: the labels are that already
        reply["gradcam"] = _grad_cam(net, x, int(probabilities.argmax()), seen)
    return reply
