"""Plugins from installed packages (entry points): the two shipped in plugins/ (a DICOM
segmentation data plugin, a mask-outline view), found at start-up; a broken one reported
on the admin page and left out; a DICOM dataset built through the plugin by the real
worker, a model trained on it, and the plugin's view of its output."""
from __future__ import annotations

import base64
import io
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from django.test import Client
from PIL import Image

from datasets.plugins import data_plugins
from models_app.view_plugins import view_plugins
from tests.conftest import token_client, wait_for_status

pytestmark = pytest.mark.django_db(transaction=True)


def write_dicom_series(folder: Path, count: int, size: int = 48, seed: int = 0) -> None:
    """MR-like slices (12-bit, with a window) of a bright disc on noise, and each disc's
    contour as `<stem>-icontour-manual.txt` (Sunnybrook's naming): what DIGITS' Sunnybrook
    plugin read. Made here with pydicom: nothing is downloaded."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import MRImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        cx, cy, r = rng.uniform(14, size - 14), rng.uniform(14, size - 14), rng.uniform(6, 11)
        yy, xx = np.mgrid[:size, :size]
        pixels = np.random.default_rng(seed * 1000 + i).normal(400, 60, (size, size))
        pixels[(xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r] = 1500
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, "MR"
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.WindowCenter, ds.WindowWidth = 900, 1600
        ds.PixelData = np.clip(pixels, 0, 4095).astype(np.uint16).tobytes()
        stem = f"IM-0001-{i:04d}"
        ds.save_as(folder / f"{stem}.dcm", enforce_file_format=True)
        points = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 32, endpoint=False)]
        (folder / f"{stem}-icontour-manual.txt").write_text("".join(f"{x:.2f} {y:.2f}\n" for x, y in points))


@pytest.fixture
def broken_plugins(tmp_path: Path, monkeypatch):
    """An installed distribution whose plugins cannot load: a module that does not exist,
    and a class that is not a plugin."""
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[digits.data_plugins]\nbroken = no_such_module_here:Nothing\n\n[digits.visualization_plugins]\nnot-a-view = json:JSONDecoder\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    data_plugins(refresh=True), view_plugins(refresh=True)
    yield
    monkeypatch.undo()
    data_plugins(refresh=True), view_plugins(refresh=True)


def test_plugins_are_found_and_a_broken_one_is_reported_not_fatal(broken_plugins, api, owner, admin_user):
    data, views = data_plugins(), view_plugins()
    assert "dicom-segmentation" in data.plugins and "mask-outline" in views.plugins  # the shipped packages
    failed = {f["name"]: f["error"] for f in data.failures + views.failures}
    assert failed["broken"].startswith("ModuleNotFoundError: No module named 'no_such_module_here'")
    assert failed["not-a-view"].startswith("TypeError: json:JSONDecoder is not a subclass of models_app.view_plugins.VisualizationPlugin")
    assert "broken" not in data.plugins and "not-a-view" not in views.plugins
    # The admin page says so; the API too, to staff.
    client = Client()
    client.force_login(admin_user)
    page = client.get("/admin/").content.decode()
    assert 'id="plugin-report"' in page and "no_such_module_here:Nothing" in page and "dicom-segmentation" in page
    listed = token_client(admin_user).get("/api/plugins/").json()
    assert {f["name"] for f in listed["failures"]} == {"broken", "not-a-view"}
    assert [p["name"] for p in listed["data"]] == ["dicom-segmentation"]
    assert [f["name"] for f in listed["data"][0]["fields"]] == ["image_folder", "contour_folder", "class_name", "window"]
    assert api.get("/api/plugins/").json()["failures"] == []  # not to everyone
    # The API schema types `plugin_options` from the plugin's own fields.
    schema = api.get("/api/schema/?format=json").json()
    options = schema["components"]["schemas"]["DatasetInputRequest"]["properties"]["plugin_options"]
    (dicom,) = [v for v in options["oneOf"] if v["title"] == "dicom-segmentation options"]
    assert dicom["required"] == ["image_folder"] and dicom["properties"]["window"]["enum"] == ["file", "minmax"]


@pytest.mark.e2e
def test_a_dicom_dataset_through_its_plugin_trained_and_viewed_through_another(celery_worker_process, api, owner, data_root):
    folder = data_root / "dicom"
    write_dicom_series(folder, 40)
    (folder / "IM-0001-9999.dcm").write_bytes(b"DICM? no")  # corrupt, with a contour: reported, left out
    (folder / "IM-0001-9999-icontour-manual.txt").write_text("1 1\n5 1\n5 5\n")
    (folder / "IM-0001-8888.dcm").write_bytes((folder / "IM-0001-0000.dcm").read_bytes())  # no contour: not an entry
    empty = data_root / "dicom-without-contours"
    empty.mkdir(exist_ok=True)
    (empty / "IM-0002-0000.dcm").write_bytes((folder / "IM-0001-0000.dcm").read_bytes())

    body = {"name": "dicom", "task": "segmentation", "source": "plugin", "plugin": "dicom-segmentation",
            "image_width": 48, "image_height": 48, "val_percent": 25}
    for options, field, message in [
        ({}, "plugin_options.image_folder", "DICOM folder: give a value."),
        ({"image_folder": "/etc"}, "plugin_options.image_folder", "outside the allowed data roots"),
        ({"image_folder": str(empty)}, "plugin_options.image_folder", "No DICOM file (.dcm) there has a contour file"),
        ({"image_folder": str(folder), "window": "gamma"}, "plugin_options.window", "Intensity: one of file, minmax."),
        ({"image_folder": str(folder), "colour": "red"}, "plugin_options", "has no option colour"),
    ]:
        refused = api.post("/api/datasets/", {**body, "plugin_options": options}, format="json")
        assert refused.status_code == 400 and list(refused.json()["errors"]) == [field], refused.json()
        assert message in refused.json()["detail"], refused.json()
    wrong_task = api.post("/api/datasets/", {**body, "task": "classification", "plugin_options": {"image_folder": str(folder)}},
                          format="json")
    assert wrong_task.status_code == 400 and "makes segmentation datasets" in wrong_task.json()["detail"]

    response = api.post("/api/datasets/", {**body, "plugin_options": {"image_folder": str(folder), "class_name": "ventricle"}},
                        format="json")
    assert response.status_code == 201, response.content
    data = wait_for_status(api, f"/api/datasets/{response.json()['id']}/", {"done", "error"})
    assert data["job"]["status"] == "done", data["job"]
    assert data["labels"] == ["background", "ventricle"] and data["label_colours"] == [[0, 0, 0], [220, 40, 40]]
    assert sum(data["counts"].values()) == 40
    assert [(s["path"], s["reason"].split(" (")[0]) for s in data["skipped"]] == [
        ("IM-0001-9999.dcm", "the plugin could not load it")
    ]
    assert data["plugin_options"]["image_folder"] == str(folder) and data["plugin_options"]["window"] == "file"
    pixels = data["class_counts"]["train"]
    assert pixels[1] > 0 and pixels[0] > 3 * pixels[1]  # the discs are a part of each slice
    # The gallery shows the contours' masks over the windowed slices.
    shown = api.get(f"/api/datasets/{data['id']}/images/train/0/?show=overlay")
    assert shown.status_code == 200 and Image.open(io.BytesIO(shown.content)).size == (48, 48)

    model = api.post("/api/models/", {"name": "unet", "dataset": data["id"], "network": "unet_small", "epochs": 3,
                                      "batch_size": 8, "solver": "adam", "learning_rate": 0.003}, format="json")
    assert model.status_code == 201, model.content
    trained = wait_for_status(api, f"/api/models/{model.json()['id']}/", {"done", "error"}, timeout=300)
    assert trained["job"]["status"] == "done", trained["job"]
    image = api.get(f"/api/datasets/{data['id']}/images/val/0/").content
    reply = api.post(f"/api/models/{trained['id']}/classify/", {"image": io.BytesIO(image)}, format="multipart")
    assert reply.status_code == 200, reply.content
    (view,) = reply.json()["plugin_views"]
    assert view["plugin"] == "mask-outline" and view["image"].startswith("data:image/png;base64,")
    drawn = Image.open(io.BytesIO(base64.b64decode(view["image"].split(",", 1)[1])))
    assert drawn.size == (240, 240)  # enlarged 5 times to draw the outlines
    client = Client()
    client.force_login(owner)
    page = client.get("/datasets/new/").content.decode()
    assert 'name="plugin_options__dicom-segmentation__image_folder"' in page
    shown = client.get(f"/datasets/{data['id']}/").content.decode()
    assert 'id="plugin-source">dicom-segmentation<' in shown and "class_name: <code>ventricle</code>" in shown
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(empty, ignore_errors=True)
