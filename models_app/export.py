"""The downloads of a snapshot, assembled without torch (the web process never loads it):
the archive (weights, network definition, preprocessing, labels, mean image, info.json, a
standalone classify.py, and model.onnx when the snapshot's ONNX export passed its check),
and a Triton model-repository layout of that ONNX file."""
from __future__ import annotations

import io
import json
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from django.utils import timezone

import datasets.imaging
from workers import storage
from workers.inference import ask

from .export_verify import INPUT_NAME, OUTPUT_NAME, WEIGHTS
from .exports import export_file, export_for, require_export_file
from .models import Export, Network, Snapshot, TrainedModel
from .networks import network_source
from .services import input_size

SCRIPT = Path(__file__).resolve().parent / "archive" / "classify.py"
README = """Exported from DIGITS-NG.

    pip install {requirements}
    python classify.py some_image.png

(A segmentation model: each image's class map is written as <image>_labels.png in the
label colours of info.json, or --out FOLDER, and the share of each class is printed.)

model.pt holds the state_dict of network.build(info["input_shape"], info["num_classes"]).
Inputs are resized with imaging.resize_image, mean-subtracted (info["mean_subtraction"]:
the mean image mean.npy, its per-channel mean, or nothing), centre-cropped to
info["crop_size"] when set, and divided by 255.
"""
ONNX_README = """
model.onnx is the same network exported to ONNX (dynamic batch; input "input", N x C x H x W
float32, output "logits"), checked against PyTorch when it was made (info["exports"]). Without
torch:

    pip install onnxruntime numpy pillow
    python classify.py --runtime onnx some_image.png
"""
DETECTION_ONNX_README = """
model.onnx is the same detector exported to ONNX, one image at a time (input "input",
1 x C x H x W float32; outputs "boxes" (K x 4: left, top, right, bottom in the input's
pixels), "labels" (K, counted from 1: label i is line i of labels.txt) and "scores" (K),
surest first), its detections checked against PyTorch's when it was made (info["exports"]).
Without torch:

    pip install onnxruntime numpy pillow
    python classify.py --runtime onnx some_image.png
"""
TRITON_DETECTION_CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [
  {{
    name: "{input}"
    data_type: TYPE_FP32
    dims: [ 1, {channels}, {height}, {width} ]
  }}
]
output [
  {{
    name: "boxes"
    data_type: TYPE_FP32
    dims: [ -1, 4 ]
  }},
  {{
    name: "labels"
    data_type: TYPE_INT64
    dims: [ -1 ]
  }},
  {{
    name: "scores"
    data_type: TYPE_FP32
    dims: [ -1 ]
  }}
]
# One image per request. Inputs: resize to the dataset's size, subtract the mean (mean.npy,
# see info.json), divide by 255, channels first. Labels count from 1 (line 1 of labels.txt).
"""
TRITON_CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [
  {{
    name: "{input}"
    data_type: TYPE_FP32
    dims: [ {channels}, {height}, {width} ]
  }}
]
output [
  {{
    name: "{output}"
    data_type: TYPE_FP32
    dims: [ {classes} ]
    label_filename: "labels.txt"
  }}
]
dynamic_batching {{ }}
# Inputs: resize to the dataset's size, subtract the mean (mean.npy, see info.json), centre
# crop when info.json has crop_size, divide by 255, channels first.
"""


def archive_name(model: TrainedModel, snapshot: Snapshot) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in model.job.name)[:60] or "model"
    return f"{safe}-epoch{snapshot.epoch}.tar.gz"


def network_code(model: TrainedModel) -> str:
    return model.custom_code if model.network == Network.CUSTOM else network_source(model.network)


def requirements(code: str) -> list[str]:
    """What classify.py needs to run this network: torchvision only when network.py uses it."""
    return ["torch", *(["torchvision"] if "torchvision" in code else []), "numpy", "pillow"]


def weights_for(model: TrainedModel, snapshot: Snapshot, export: Export | None) -> tuple[Path, str]:
    """(the weights alone, the torch version that wrote them): from the snapshot's export
    when there is one, else written once by the inference worker (the web never loads torch)."""
    if export is not None and storage.fetch(export.directory / WEIGHTS).exists():
        return export.directory / WEIGHTS, str(export.results.get("torch", ""))
    reply = ask("models_app.weights_file", model_id=model.pk, epoch=snapshot.epoch)
    return storage.fetch(model.directory / reply["relative"]), reply["torch"]


def archive_info(model: TrainedModel, snapshot: Snapshot, export: Export | None, torch_version: str, code: str) -> dict[str, Any]:
    dataset = model.dataset
    checks = {}
    if export is not None:
        for name, row in export.results.get("formats", {}).items():
            checks[name] = {k: row.get(k) for k in ("status", "max_abs_diff", "tolerance", "top1_agreement", "p50_ms", "p95_ms", "error")}
    return {
        "name": model.job.name,
        "model_id": model.pk,
        "framework": f"pytorch {torch_version}".strip(),
        "network": model.network,
        "epoch": snapshot.epoch,
        "input_shape": list(input_size(dataset, model.crop_size)),
        "num_classes": dataset.num_classes,
        "image_mode": dataset.image_mode,
        "image_width": dataset.image_width,
        "image_height": dataset.image_height,
        "resize_mode": dataset.resize_mode,
        "crop_size": model.crop_size,
        "mean_subtraction": model.mean_subtraction,
        "preprocessing": "centre_crop(resize(image) - mean) / 255, channels first",
        "labels": dataset.labels,
        # "segmentation": the output is (N, classes, H, W) logits, a class per pixel, drawn
        # in label_colours (class id -> [r, g, b]).
        "task": dataset.task,
        "label_colours": dataset.label_colours if dataset.is_segmentation else None,
        "dataset": dataset.job.name,
        "val_accuracy": snapshot.val_accuracy,
        "val_loss": snapshot.val_loss,
        "requirements": requirements(code),
        # How each export compared with PyTorch when it was made (export job #export_id).
        "export_id": export.pk if export is not None else None,
        "exports": checks,
        "onnx": (
            {"file": "model.onnx", "input": INPUT_NAME,
             **({"outputs": ["boxes", "labels", "scores"]} if dataset.is_detection else {"output": OUTPUT_NAME})}
            if checks.get("onnx", {}).get("status") == "passed" else None
        ),
        "exported_at": timezone.now().isoformat(),
    }


class _Tar:
    """A .tar.gz in a temporary file (streamed by the view, removed after)."""

    def __init__(self, directory: Path) -> None:
        fd, name = tempfile.mkstemp(suffix=".tar.gz", dir=directory)
        self.path = Path(name)
        self._raw = open(fd, "wb")
        self._tar = tarfile.open(fileobj=self._raw, mode="w:gz")
        self._mtime = int(timezone.now().timestamp())

    def add_bytes(self, arcname: str, data: bytes, mode: int = 0o644) -> None:
        member = tarfile.TarInfo(arcname)
        member.size, member.mtime, member.mode = len(data), self._mtime, mode
        self._tar.addfile(member, io.BytesIO(data))

    def add_file(self, arcname: str, path: Path) -> None:
        member = self._tar.gettarinfo(str(path), arcname)
        member.mtime, member.mode, member.uid, member.gid, member.uname, member.gname = self._mtime, 0o644, 0, 0, "", ""
        with path.open("rb") as fh:
            self._tar.addfile(member, fh)

    def close(self) -> Path:
        self._tar.close()
        self._raw.close()
        return self.path

    def discard(self) -> None:
        self._tar.close()
        self._raw.close()
        self.path.unlink(missing_ok=True)


def build_archive(model: TrainedModel, snapshot: Snapshot) -> Path:
    """The archive that runs elsewhere: weights, network.py, imaging.py, classify.py,
    labels, mean, info.json, and model.onnx when this snapshot's ONNX export passed."""
    export = export_for(model, snapshot)
    weights, torch_version = weights_for(model, snapshot, export)
    storage.fetch(model.dataset.mean_path)
    model.directory.mkdir(parents=True, exist_ok=True)  # the archive is made there (another host's model)
    onnx = export_file(export, "onnx")
    code = network_code(model)
    info = archive_info(model, snapshot, export, torch_version, code)
    folder = archive_name(model, snapshot).removesuffix(".tar.gz")
    tar = _Tar(model.directory)
    try:
        tar.add_file(f"{folder}/model.pt", weights)
        if onnx is not None:
            tar.add_file(f"{folder}/model.onnx", onnx)
        tar.add_bytes(f"{folder}/network.py", code.encode())
        tar.add_bytes(f"{folder}/imaging.py", Path(datasets.imaging.__file__).read_bytes())
        tar.add_bytes(f"{folder}/classify.py", SCRIPT.read_bytes(), mode=0o755)
        tar.add_bytes(f"{folder}/labels.txt", ("\n".join(model.dataset.labels) + "\n").encode())
        tar.add_bytes(f"{folder}/mean.npy", model.dataset.mean_path.read_bytes())
        tar.add_bytes(f"{folder}/info.json", json.dumps(info, indent=2).encode())
        readme = README.format(requirements=" ".join(info["requirements"]))
        if onnx is not None:
            readme += DETECTION_ONNX_README if model.dataset.is_detection else ONNX_README
        tar.add_bytes(f"{folder}/README.txt", readme.encode())
    except BaseException:
        tar.discard()
        raise
    return tar.close()


def triton_config(name: str, model: TrainedModel) -> str:
    """config.pbtxt for Triton's ONNX Runtime backend: batch dimension dynamic (up to
    max_batch_size), one FP32 input in CHW, logits out, labels attached."""
    channels, height, width = input_size(model.dataset, model.crop_size)
    classes = model.dataset.num_classes
    if model.dataset.is_detection:
        return TRITON_DETECTION_CONFIG.format(name=name, channels=channels, height=height, width=width, input=INPUT_NAME)
    config = TRITON_CONFIG.format(
        name=name, channels=channels, height=height, width=width, classes=classes, input=INPUT_NAME, output=OUTPUT_NAME,
    )
    if model.dataset.is_segmentation:  # logits per pixel; no label file for a class map
        config = config.replace(f"dims: [ {classes} ]\n    label_filename: \"labels.txt\"", f"dims: [ {classes}, {height}, {width} ]")
    return config


def build_triton(model: TrainedModel, snapshot: Snapshot) -> Path:
    """A Triton model repository entry: <name>/config.pbtxt, <name>/1/model.onnx, labels.
    Only from an ONNX export that passed its check (raises Conflict otherwise)."""
    export, onnx = require_export_file(model, snapshot, "onnx")
    storage.fetch(model.dataset.mean_path)
    model.directory.mkdir(parents=True, exist_ok=True)
    name = archive_name(model, snapshot).removesuffix(".tar.gz").replace(".", "_")
    info = archive_info(model, snapshot, export, str(export.results.get("torch", "")), network_code(model))
    tar = _Tar(model.directory)
    try:
        tar.add_bytes(f"{name}/config.pbtxt", triton_config(name, model).encode())
        tar.add_file(f"{name}/1/model.onnx", onnx)
        tar.add_bytes(f"{name}/labels.txt", ("\n".join(model.dataset.labels) + "\n").encode())
        tar.add_bytes(f"{name}/mean.npy", model.dataset.mean_path.read_bytes())
        tar.add_bytes(f"{name}/info.json", json.dumps(info, indent=2).encode())
    except BaseException:
        tar.discard()
        raise
    return tar.close()
