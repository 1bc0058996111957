"""The downloadable model archive: weights, network definition, preprocessing, labels,
mean image, info.json and a standalone classify.py (torch, numpy and Pillow, plus
torchvision for the networks built from it)."""
from __future__ import annotations

import io
import json
import tarfile
import tempfile
from pathlib import Path

from django.utils import timezone

import datasets.imaging

from .models import Network, Snapshot, TrainedModel
from .networks import network_source

SCRIPT = Path(__file__).resolve().parent / "archive" / "classify.py"
README = """Exported from DIGITS-NG.

    pip install {requirements}
    python classify.py some_image.png

model.pt holds the state_dict of network.build(info["input_shape"], info["num_classes"]).
Inputs are resized with imaging.resize_image, mean-subtracted (info["mean_subtraction"]:
the mean image mean.npy, its per-channel mean, or nothing), centre-cropped to
info["crop_size"] when set, and divided by 255.
"""


def archive_name(model: TrainedModel, snapshot: Snapshot) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in model.job.name)[:60] or "model"
    return f"{safe}-epoch{snapshot.epoch}.tar.gz"


def network_code(model: TrainedModel) -> str:
    return model.custom_code if model.network == Network.CUSTOM else network_source(model.network)


def requirements(code: str) -> list[str]:
    """What classify.py needs to run this network: torchvision only when network.py uses it."""
    return ["torch", *(["torchvision"] if "torchvision" in code else []), "numpy", "pillow"]


def build_archive(model: TrainedModel, snapshot: Snapshot) -> Path:
    """Write the archive to a temporary file (streamed by the view, removed after)."""
    import torch  # here: the web process loads torch only when someone downloads a model

    dataset = model.dataset
    checkpoint = torch.load(snapshot.path, map_location="cpu", weights_only=True)
    code = network_code(model)
    info = {
        "name": model.job.name,
        "model_id": model.pk,
        "framework": f"pytorch {torch.__version__}",
        "network": model.network,
        "epoch": snapshot.epoch,
        "input_shape": checkpoint["input_shape"],
        "num_classes": checkpoint["num_classes"],
        "image_mode": dataset.image_mode,
        "image_width": dataset.image_width,
        "image_height": dataset.image_height,
        "resize_mode": dataset.resize_mode,
        "crop_size": model.crop_size,
        "mean_subtraction": model.mean_subtraction,
        "preprocessing": "centre_crop(resize(image) - mean) / 255, channels first",
        "labels": dataset.labels,
        "dataset": dataset.job.name,
        "val_accuracy": snapshot.val_accuracy,
        "val_loss": snapshot.val_loss,
        "requirements": requirements(code),
        "exported_at": timezone.now().isoformat(),
    }
    weights = io.BytesIO()
    torch.save(checkpoint["model"], weights)
    fd, name = tempfile.mkstemp(suffix=".tar.gz", dir=model.directory)
    with open(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:

        def add_bytes(arcname: str, data: bytes) -> None:
            member = tarfile.TarInfo(arcname)
            member.size = len(data)
            member.mtime = int(timezone.now().timestamp())
            member.mode = 0o755 if arcname.endswith("classify.py") else 0o644
            tar.addfile(member, io.BytesIO(data))

        folder = archive_name(model, snapshot).removesuffix(".tar.gz")
        add_bytes(f"{folder}/model.pt", weights.getvalue())
        add_bytes(f"{folder}/network.py", code.encode())
        add_bytes(f"{folder}/imaging.py", Path(datasets.imaging.__file__).read_bytes())
        add_bytes(f"{folder}/classify.py", SCRIPT.read_bytes())
        add_bytes(f"{folder}/labels.txt", ("\n".join(dataset.labels) + "\n").encode())
        add_bytes(f"{folder}/mean.npy", dataset.mean_path.read_bytes())
        add_bytes(f"{folder}/info.json", json.dumps(info, indent=2).encode())
        add_bytes(f"{folder}/README.txt", README.format(requirements=" ".join(info["requirements"])).encode())
    return Path(name)
