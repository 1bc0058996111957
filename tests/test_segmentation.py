"""Segmentation datasets: images paired with label images (class ids, a palette, or the
class list's colours), built by the real worker; the synthetic shapes generator; and the
pure pieces (class lists, label images, resizing labels with the image)."""
from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command
from django.test import Client
from PIL import Image

from datasets.imaging import IGNORE_LABEL, load_mask, resize_image
from datasets.lmdb_store import open_readonly, read_meta, read_record
from datasets.models import Dataset
from datasets.source_paths import read_paths
from datasets.sources import SourceError, read_class_list
from datasets.synthetic import CLASS_COLOURS, CLASSES, write_shapes
from tests.conftest import wait_for_status
from tests.test_export import _run_script, _untar

pytestmark = pytest.mark.django_db


@pytest.fixture
def seg_folder(data_root: Path, request) -> Path:
    folder = data_root / f"seg-{request.node.name}"
    write_shapes(folder, 40, 48, seed=5)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_segmentation_dataset_from_label_images(celery_worker_process, api, owner, seg_folder):
    # Some bad pairs among the good ones: each is reported, the rest is built.
    Image.new("L", (10, 10)).save(seg_folder / "masks" / "00001.png")  # not the image's size
    Image.new("RGB", (48, 48), (1, 2, 3)).save(seg_folder / "masks" / "00002.png")  # a colour of no class
    (seg_folder / "masks" / "00003.png").unlink()  # no label image
    np_ids = np.zeros((48, 48), dtype=np.uint8)
    np_ids[0, 0] = 9
    Image.fromarray(np_ids, "L").save(seg_folder / "masks" / "00004.png")  # an id of no class
    # RGB label images with the class list's colours are read as well as palette ones.
    palette = Image.open(seg_folder / "masks" / "00005.png")
    palette.convert("RGB").save(seg_folder / "masks" / "00005.png")

    body = {"name": "seg", "task": "segmentation", "folder": str(seg_folder / "images"),
            "label_folder": str(seg_folder / "masks"), "class_list": str(seg_folder / "classes.txt"),
            "image_width": 32, "image_height": 24, "resize_mode": "fill", "val_percent": 25}
    response = api.post("/api/datasets/", body, format="json")
    assert response.status_code == 201, response.content
    data = wait_for_status(api, f"/api/datasets/{response.json()['id']}/", {"done", "error"})
    assert data["job"]["status"] == "done", data["job"]
    assert data["task"] == "segmentation" and data["labels"] == list(CLASSES)
    assert data["label_colours"] == [list(c) for c in CLASS_COLOURS]
    reasons = {s["path"]: s["reason"] for s in data["skipped"]}
    assert reasons["00001.png"] == "label image is 10x10, its image 48x48"
    assert reasons["00002.png"] == "colour (1, 2, 3) is not in the class list"
    assert reasons["00003.png"] == "no label image of that name"
    assert reasons["00004.png"].startswith("class id 9 is not in the class list")
    assert len(reasons) == 4
    # 39 pairs split 29/10 before decoding; the 3 that then fail are left out of their split.
    assert sum(data["counts"].values()) == 36 and 7 <= data["counts"]["val"] <= 10
    # Pixel counts per class: every stored pixel is a class's or "ignored".
    for split, count in data["counts"].items():
        assert sum(data["class_counts"][split]) + data["ignored_pixels"][split] == count * 32 * 24
    assert all(n > 0 for n in data["class_counts"]["train"])
    # "fill" pads the square images' sides: those pixels are ignored, not background.
    assert data["ignored_pixels"]["train"] == data["counts"]["train"] * 2 * 4 * 24

    # Record i of the label database is the label image of image i, resized the same way.
    dataset = Dataset.objects.get(pk=data["id"])
    meta = read_meta(dataset.label_split_path("train"))
    train = data["counts"]["train"]
    assert (meta["width"], meta["height"], meta["channels"], meta["count"]) == (32, 24, 1, train)
    sources = read_paths(dataset.directory, "train", range(train))
    with open_readonly(dataset.label_split_path("train")).begin() as txn:
        for index in (0, train // 2, train - 1):
            stored, _ = read_record(txn, index, meta)
            name = Path(sources[index]).name
            expected = resize_image(load_mask(seg_folder / "masks" / name, list(CLASS_COLOURS)), 32, 24, "fill", pad=IGNORE_LABEL)
            assert np.array_equal(stored[:, :, 0], np.asarray(expected)), name
    # Its page shows pixels per class with the classes' colours; the gallery the labels
    # over each image; the API the labels in colour.
    client = Client()
    client.force_login(owner)
    page = client.get(f"/datasets/{data['id']}/").content.decode()
    assert "Pixels per class" in page and "rgb(220, 20, 60)" in page and 'id="task">Segmentation' in page
    gallery = client.get(f"/datasets/{data['id']}/explore/?split=val").content.decode()
    assert gallery.count("?show=overlay") == data["counts"]["val"] and 'id="legend"' in gallery
    labels = api.get(f"/api/datasets/{data['id']}/images/train/0/?show=labels")
    assert labels.status_code == 200 and labels["Content-Type"] == "image/png"
    with open_readonly(dataset.label_split_path("train")).begin() as txn:
        ids, _ = read_record(txn, 0, meta)
    coloured = np.asarray(Image.open(io.BytesIO(labels.content)).convert("RGB"))
    palette = np.asarray(CLASS_COLOURS + ((0, 0, 0),) * (256 - len(CLASS_COLOURS)), dtype=np.uint8)
    assert np.array_equal(coloured, palette[ids[:, :, 0]])
    overlay = api.get(f"/api/datasets/{data['id']}/images/train/0/?show=overlay")
    image = api.get(f"/api/datasets/{data['id']}/images/train/0/")
    blended, plain = (np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(int) for r in (overlay, image))
    ignored = ids[:, :, 0] == IGNORE_LABEL
    assert ignored.any() and np.array_equal(blended[ignored], plain[ignored])  # the padding shows the image
    assert np.abs(blended[~ignored] - (0.45 * plain[~ignored] + 0.55 * palette[ids[:, :, 0]][~ignored])).max() <= 1
    assert api.get(f"/api/datasets/{data['id']}/images/train/0/?show=bogus").status_code == 400


def test_segmentation_requests_are_checked_field_by_field(api, seg_folder, tmp_path):
    base = {"name": "seg", "task": "segmentation", "folder": str(seg_folder / "images"),
            "label_folder": str(seg_folder / "masks"), "class_list": str(seg_folder / "classes.txt")}
    cases = [
        ({"class_list": ""}, "class_list", "Give the class list"),
        ({"label_folder": ""}, "label_folder", "Give the folder of label images"),
        ({"label_folder": str(tmp_path)}, "label_folder", "outside the allowed data roots"),
        ({"class_list": str(seg_folder / "images" / "00000.png")}, "class_list", "Cannot read the class list"),
        ({"source": "upload"}, "upload", "Upload an archive first"),  # an archive holds the labels then
        ({"source": "textfile"}, "source", "made from server folders"),
        ({"val_folder": str(seg_folder / "images")}, "val_folder", "by percentage"),
    ]
    for change, field, words in cases:
        response = api.post("/api/datasets/", {**base, **change}, format="json")
        assert response.status_code == 400, (change, response.content)
        body = response.json()
        assert field in body["errors"] and words in body["detail"], (change, body)
    # And a classification request does not take segmentation's fields.
    response = api.post("/api/datasets/", {"name": "c", "folder": str(seg_folder), "class_list": base["class_list"]}, format="json")
    assert response.status_code == 400 and "for segmentation or detection datasets" in response.json()["detail"]
    assert not Dataset.objects.exists()


def test_class_lists(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("background 0 0 0\nroad surface 128 64 128\ncar\n\n")
    names, colours = read_class_list(path)
    assert names == ["background", "road surface", "car"]
    assert colours[:2] == [(0, 0, 0), (128, 64, 128)] and colours[2] not in colours[:2]
    for text, words in [
        ("only\n", "lists 1 class"),
        ("a\n\nb\n", "blank line among its classes (line 2)"),
        ("a 0 0 0\nb 0 0 0\n", "the same colour"),
        ("a 0 0 300\nb\n", "from 0 to 255"),
    ]:
        path.write_text(text)
        with pytest.raises(SourceError, match=words.replace("(", r"\(").replace(")", r"\)")):
            read_class_list(path)


def test_label_images_resize_with_their_image_without_blending(tmp_path):
    ids = np.zeros((20, 40), dtype=np.uint8)
    ids[:, 20:] = 2
    ids[5, 5] = IGNORE_LABEL
    mask = Image.fromarray(ids, "L")
    for mode in ("squash", "crop", "fill", "half_crop"):
        out = np.asarray(resize_image(mask, 16, 16, mode, pad=IGNORE_LABEL))
        assert out.shape == (16, 16) and set(np.unique(out)) <= {0, 2, IGNORE_LABEL}, mode  # no blended value
    filled = np.asarray(resize_image(mask, 16, 16, "fill", pad=IGNORE_LABEL))
    assert (filled[0] == IGNORE_LABEL).all() and (filled[8, :8] == 0).all() and (filled[8, 9:] == 2).all()
    # Colours of the class list map to ids; a palette image holds them already.
    rgb = Image.new("RGB", (4, 4), CLASS_COLOURS[3])
    rgb.save(tmp_path / "rgb.png")
    assert np.asarray(load_mask(tmp_path / "rgb.png", list(CLASS_COLOURS))).tolist() == [[3] * 4] * 4


def test_synthetic_shapes_agree_in_every_format(tmp_path):
    objects = write_shapes(tmp_path / "s", 12, 40, seed=2)
    coco = json.loads((tmp_path / "s" / "annotations.json").read_text())
    assert len(coco["images"]) == 12 and sum(objects.values()) == len(coco["annotations"])
    assert [c["name"] for c in coco["categories"]] == list(CLASSES[1:])
    for image in coco["images"]:
        stem = Path(image["file_name"]).stem
        ids = np.asarray(Image.open(tmp_path / "s" / "masks" / f"{stem}.png"))
        lines = (tmp_path / "s" / "labels" / f"{stem}.txt").read_text().splitlines()
        boxes = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert len(lines) == len(boxes) >= 1
        for line, box in zip(lines, boxes):
            kind, *fields = line.split()
            assert len(fields) == 14 and CLASSES.index(kind) == box["category_id"]
            left, top, right, bottom = (int(float(v)) for v in fields[3:7])
            assert [left, top, right - left + 1, bottom - top + 1] == box["bbox"]
            # The box holds the object's pixels, and its class fills most of it.
            inside = ids[top : bottom + 1, left : right + 1]
            assert (inside == box["category_id"]).sum() == box["area"] >= 0.4 * inside.size
    call_command("synthetic_shapes", str(tmp_path / "cmd"), "--count", "3", "--size", "32")
    assert len(list((tmp_path / "cmd" / "images").iterdir())) == 3


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_train_a_segmenter_and_watch_its_iou(celery_worker_process, api, owner, seg_folder, tmp_path):
    body = {"name": "seg", "task": "segmentation", "folder": str(seg_folder / "images"),
            "label_folder": str(seg_folder / "masks"), "class_list": str(seg_folder / "classes.txt"),
            "image_width": 32, "image_height": 32, "val_percent": 25}
    response = api.post("/api/datasets/", body, format="json")
    assert response.status_code == 201, response.content
    dataset_id = wait_for_status(api, f"/api/datasets/{response.json()['id']}/", {"done"})["id"]
    # A classification network is refused for it, and a segmentation one for a classification dataset.
    refused = api.post("/api/models/", {"name": "m", "dataset": dataset_id, "network": "lenet"}, format="json")
    assert refused.status_code == 400 and "network" in refused.json()["errors"]
    assert "pick a segmentation network" in refused.json()["detail"]

    model = api.post("/api/models/", {
        "name": "unet", "dataset": dataset_id, "network": "unet_small", "epochs": 6, "batch_size": 8, "solver": "adam",
        "learning_rate": 0.003, "val_interval": 2, "snapshot_interval": 3, "flip": "hv", "rotation": 10, "seed": 1,
    }, format="json")
    assert model.status_code == 201, model.content
    done = wait_for_status(api, f"/api/models/{model.json()['id']}/", {"done", "error"}, timeout=300)
    assert done["job"]["status"] == "done", done["job"]
    metrics = api.get(f"/api/models/{done['id']}/metrics/").json()
    assert [p["epoch"] for p in metrics["val_miou"]] == [2, 3, 4, 6]  # validations and snapshots
    for i in range(4):  # every class has its IoU at every validation, all within 0..1
        assert len(metrics[f"val_iou/{i}"]) == 4 and all(0 <= p["value"] <= 1 for p in metrics[f"val_iou/{i}"])
    miou = [p["value"] for p in metrics["val_miou"]]
    per_class = [metrics[f"val_iou/{i}"][-1]["value"] for i in range(4)]
    assert abs(miou[-1] - sum(per_class) / 4) < 1e-6  # the mean of the classes' IoU
    assert metrics["val_iou/0"][-1]["value"] > 0.9  # the background is learnt at once
    assert [s["epoch"] for s in done["snapshots"]] == [3, 6]
    # The page charts them, named and coloured per class.
    client = Client()
    client.force_login(owner)
    page = client.get(f"/models/{done['id']}/").content.decode()
    assert 'data-task="segmentation"' in page and "&quot;rectangle&quot;" in page

    # One image through the inference worker: each pixel's class, drawn, and the classes found.
    with open(seg_folder / "images" / "00007.png", "rb") as image:
        reply = api.post(f"/api/models/{done['id']}/classify/", {"image": image, "views": "true"}, format="multipart")
    assert reply.status_code == 200, reply.content
    result = reply.json()
    assert result["segmentation"]["labels"].startswith("data:image/png;base64,")
    drawn = Image.open(io.BytesIO(base64.b64decode(result["segmentation"]["labels"].split(",", 1)[1])))
    assert drawn.size == (32, 32)
    assert [c["label"] for c in result["segmentation"]["legend"]] == list(CLASSES)
    assert sum(p["pixels"] for p in result["predictions"]) == 32 * 32
    assert abs(sum(p["probability"] for p in result["predictions"]) - 1) < 1e-6
    assert result["predictions"][0]["label"] == "background" and 0 < result["predictions"][0]["confidence"] <= 1
    assert result["layers"] and "gradcam" not in result  # every layer's views; no Grad-CAM of a pixel map
    with open(seg_folder / "images" / "00007.png", "rb") as image:
        shown = client.post(f"/models/{done['id']}/classify/", {"image": image}).content.decode()
    assert 'id="segmentation-overlay"' in shown and "Share of the pixels" in shown

    # Export: ONNX checked pixel by pixel against PyTorch; the archive's script writes each
    # image's class map, with torch and with onnxruntime alone, the same.
    response = api.post(f"/api/models/{done['id']}/exports/", {"epoch": 6}, format="json")
    assert response.status_code == 201, response.content
    export = wait_for_status(api, f"/api/exports/{response.json()['id']}/", {"done", "error"})
    assert export["job"]["status"] == "done", export["job"]
    checks = {c["format"]: c for c in export["checks"]}
    assert checks["onnx"]["status"] == "passed" and checks["onnx"]["top1_agreement"] == 1.0, checks["onnx"]
    folder = _untar(api.get(f"/api/models/{done['id']}/download/archive/?epoch=6"), tmp_path / "archive")
    info = json.loads((folder / "info.json").read_text())
    assert info["task"] == "segmentation" and info["label_colours"] == [list(c) for c in CLASS_COLOURS]
    image = str(seg_folder / "images" / "00007.png")
    with_torch = _run_script(folder, [image], "--json", "--out", str(tmp_path / "torch"))
    without_torch = _run_script(folder, [image], "--json", "--out", str(tmp_path / "onnx"), block_torch=True)
    assert with_torch[0]["runtime"] == "torch" and without_torch[0]["runtime"] == "onnx"
    maps = [np.asarray(Image.open(r[0]["labels_png"])) for r in (with_torch, without_torch)]
    assert maps[0].shape == (32, 32, 3) and np.array_equal(maps[0], maps[1])
    # The same class map as the inference worker drew for this image.
    assert np.array_equal(maps[0], np.asarray(drawn.convert("RGB")))
    assert with_torch[0]["classes"] == without_torch[0]["classes"]
    triton = _untar(api.get(f"/api/models/{done['id']}/download/triton/?epoch=6"), tmp_path / "triton")
    assert "dims: [ 4, 32, 32 ]" in (triton / "config.pbtxt").read_text()

    # Evaluate the snapshot on the validation split: the figures of its last validation,
    # and its images worst first, prediction beside ground truth.
    refused = api.post(f"/api/models/{done['id']}/evaluations/", {"image_list": "a.png\n"}, format="json")
    assert refused.status_code == 400 and "on a split of its dataset" in refused.json()["detail"]
    response = api.post(f"/api/models/{done['id']}/evaluations/", {"split": "val", "epoch": 6}, format="json")
    assert response.status_code == 201, response.content
    evaluation = wait_for_status(api, f"/api/evaluations/{response.json()['id']}/", {"done", "error"})
    assert evaluation["job"]["status"] == "done", evaluation["job"]
    m = evaluation["metrics"]
    val_count = api.get(f"/api/datasets/{dataset_id}/").json()["counts"]["val"]
    assert m["task"] == "segmentation" and m["images"] == val_count
    # The same weights on the same images: the same mean IoU as the validation at epoch 6
    # (up to a pixel whose two best classes tie differently in another batch size).
    assert m["miou"] == pytest.approx(miou[-1], abs=0.01)
    assert m["iou"][0] == pytest.approx(per_class[0], abs=0.01) and len(m["iou"]) == 4
    assert sum(m["pixels"]) == sum(sum(row) for row in m["confusion"]) <= val_count * 32 * 32
    worst = api.get(f"/api/evaluations/{evaluation['id']}/images/?per_page=5").json()
    assert worst["view"] == "worst" and worst["total"] == val_count
    scores = [row["score"] for row in worst["images"]]
    assert scores == sorted(scores) and all(0 <= v <= 1 for v in scores)
    every = api.get(f"/api/evaluations/{evaluation['id']}/images/?view=all&per_page=200").json()["images"]
    assert scores[0] == min(row["score"] for row in every)
    assert [row["index"] for row in every] == list(range(val_count))
    first = worst["images"][0]
    assert first["has_prediction"] and first["path"]
    predicted = api.get(first["image_url"])
    truth = api.get(first["truth_url"])
    assert predicted.status_code == truth.status_code == 200 and predicted["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(predicted.content)).size == (32, 32)
    # The drawn prediction is the network's: the inference worker draws the same overlay for that image's file.
    with open(seg_folder / "images" / first["path"], "rb") as image:
        again = api.post(f"/api/models/{done['id']}/classify/", {"image": image, "epoch": 6}, format="multipart").json()
    overlay = Image.open(io.BytesIO(base64.b64decode(again["segmentation"]["overlay"].split(",", 1)[1])))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(predicted.content))), np.asarray(overlay))
    rows = api.get(f"/api/evaluations/{evaluation['id']}/csv/").content.decode().splitlines()
    assert rows[0] == "index,image,mean_iou,pixel_accuracy" and len(rows) == val_count + 1
    compared = api.get(f"/api/evaluations/compare/?a={evaluation['id']}&b={evaluation['id']}")
    assert compared.status_code == 400 and "for classification evaluations" in compared.json()["detail"]
    page = client.get(f"/evaluations/{evaluation['id']}/").content.decode()
    assert 'id="miou"' in page and "The worst images first" in page and "show=prediction" in page
    assert f"{100 * m['miou']:.2f}%" in page


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_segmentation_and_detection_train_on_two_ranks(celery_worker_process, api, data_root):
    """DDP (gloo, two CPU device workers) for both new kinds: the run completes, reports
    once per step, and its validation agrees across ranks (one figure per validation)."""
    folder = data_root / "ddp-shapes"
    write_shapes(folder, 48, 32, seed=21)
    try:
        ids = {}
        for task, extra in (("segmentation", {"label_folder": str(folder / "masks"), "class_list": str(folder / "classes.txt")}),
                            ("detection", {"label_folder": str(folder / "labels")})):
            body = {"name": task, "task": task, "folder": str(folder / "images"), "image_width": 32, "image_height": 32,
                    "val_percent": 25, **extra}
            response = api.post("/api/datasets/", body, format="json")
            assert response.status_code == 201, response.content
            ids[task] = wait_for_status(api, f"/api/datasets/{response.json()['id']}/", {"done"})["id"]
        for task, network, measure in (("segmentation", "unet_small", "val_miou"), ("detection", "fcos_small", "val_map50")):
            response = api.post("/api/models/", {
                "name": f"{task}-ddp", "dataset": ids[task], "network": network, "epochs": 2, "batch_size": 8,
                "solver": "adam", "learning_rate": 0.001, "devices": 2, "seed": 4,
            }, format="json")
            assert response.status_code == 201, response.content
            done = wait_for_status(api, f"/api/models/{response.json()['id']}/", {"done", "error"}, timeout=300)
            assert done["job"]["status"] == "done", (task, done["job"])
            running = [e for e in done["job"]["timeline"] if e["status"] == "running"][-1]
            assert "2 ranks meet at" in running["message"]
            metrics = api.get(f"/api/models/{done['id']}/metrics/").json()
            iterations = [p["iteration"] for p in metrics["train_loss"]]
            assert iterations == list(range(1, len(iterations) + 1)) and len(iterations) == 2 * 5  # 36 images / batch 8
            assert [p["epoch"] for p in metrics[measure]] == [1, 2]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
