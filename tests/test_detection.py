"""Detection datasets: images with boxes from KITTI label files (DIGITS' format) or a COCO
file, built by the real worker: boxes moved with their resized image, bad label files
reported, objects per class; the gallery draws the boxes."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from django.test import Client
from PIL import Image

from datasets.imaging import resize_boxes
from datasets.models import Dataset
from datasets.source_paths import read_paths
from datasets.sources import parse_kitti
from datasets.synthetic import CLASSES, write_shapes
from tests.conftest import wait_for_status

pytestmark = pytest.mark.django_db


@pytest.fixture
def det_folder(data_root: Path, request) -> Path:
    folder = data_root / f"det-{request.node.name}"
    write_shapes(folder, 40, 48, seed=11)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_detection_dataset_from_kitti_labels_and_from_coco(celery_worker_process, api, owner, det_folder):
    labels = det_folder / "labels"
    (labels / "00001.txt").write_text("circle 0 0 0 1 2 3\n")  # too few fields
    (labels / "00002.txt").write_text("circle 0.00 0 0.00 10 10 5 20 0 0 0 0 0 0 0\n")  # an empty box
    (labels / "00003.txt").write_text("circle 0.00 0 0.00 a b c d 0 0 0 0 0 0 0\n")  # not numbers
    (labels / "00004.txt").unlink()  # no label file: an image without objects
    (labels / "00005.txt").write_text((labels / "00005.txt").read_text() + "DontCare -1 -1 -10 1 1 5 5 -1 -1 -1 -1 -1 -1 -1\n")
    (labels / "stray.txt").write_text("circle 0 0 0 1 1 5 5 0 0 0 0 0 0 0\n")  # no image of that name

    body = {"name": "det", "task": "detection", "folder": str(det_folder / "images"), "label_folder": str(labels),
            "image_width": 32, "image_height": 24, "resize_mode": "fill", "val_percent": 25}
    response = api.post("/api/datasets/", body, format="json")
    assert response.status_code == 201, response.content
    data = wait_for_status(api, f"/api/datasets/{response.json()['id']}/", {"done", "error"})
    assert data["job"]["status"] == "done", data["job"]
    assert data["task"] == "detection" and data["labels"] == sorted(CLASSES[1:])  # from the label files
    reasons = {s["path"]: s["reason"] for s in data["skipped"]}
    assert reasons["00001.txt"].startswith("line 1 has 7 fields")
    assert reasons["00002.txt"].startswith("line 1: the box 10,10,5,20 is empty")
    assert reasons["00003.txt"] == "line 1: the box (fields 5 to 8) is not four numbers"
    assert reasons["[labels] stray.txt"] == "no image of that name"
    assert len(reasons) == 4
    assert sum(data["counts"].values()) == 37  # 40 images, 3 with bad labels; 00004 kept, without objects

    # Each stored image's boxes are its label file's, moved as the image was resized.
    dataset = Dataset.objects.get(pk=data["id"])
    train = data["counts"]["train"]
    sources = read_paths(dataset.directory, "train", range(train))
    total = 0
    for index in range(train):
        name = Path(sources[index]).stem
        page = api.get(f"/api/datasets/{data['id']}/images/?split=train&per_page=100").json()
        objects = next(i["objects"] for i in page["images"] if i["index"] == index)
        label_file = labels / f"{name}.txt"
        expected = [o for o in parse_kitti(str(label_file))] if label_file.exists() else []
        moved, kept = resize_boxes(np.array([o[1:] for o in expected]).reshape(-1, 4), (48, 48), 32, 24, "fill")
        assert [o["label"] for o in objects] == [expected[k][0] for k in kept], name
        assert np.allclose(np.asarray([o["box"] for o in objects]).reshape(-1, 4), moved.round(2).reshape(-1, 4), atol=0.01), name
        total += len(objects)
    assert sum(data["class_counts"]["train"]) == total > 0

    # The gallery draws them; the page counts objects per class.
    drawn = api.get(f"/api/datasets/{data['id']}/images/train/0/?show=boxes")
    assert drawn.status_code == 200 and Image.open(io.BytesIO(drawn.content)).size == (256, 192)  # 8x: to read the names
    assert api.get(f"/api/datasets/{data['id']}/images/train/0/?show=labels").status_code == 400
    client = Client()
    client.force_login(owner)
    page = client.get(f"/datasets/{data['id']}/").content.decode()
    assert "Objects per class" in page and "KITTI labels" in page
    gallery = client.get(f"/datasets/{data['id']}/explore/?split=val").content.decode()
    assert gallery.count("?show=boxes") == data["counts"]["val"]

    # The same images from the COCO file, with a class list that keeps two classes, in its order.
    (det_folder / "two.txt").write_text("triangle\ncircle\n")
    coco = {"name": "det-coco", "task": "detection", "folder": str(det_folder), "annotations_file": str(det_folder / "annotations.json"),
            "class_list": str(det_folder / "two.txt"), "image_width": 48, "image_height": 48, "val_percent": 25}
    response = api.post("/api/datasets/", coco, format="json")
    assert response.status_code == 201, response.content
    data = wait_for_status(api, f"/api/datasets/{response.json()['id']}/", {"done", "error"})
    assert data["job"]["status"] == "done", data["job"]
    assert data["labels"] == ["triangle", "circle"] and sum(data["counts"].values()) == 40
    left_out = [s for s in data["skipped"] if s["path"] == "[class 'rectangle']"]
    assert len(left_out) == 1 and "of a class not in the class list" in left_out[0]["reason"]


def test_detection_requests_are_checked(api, det_folder):
    base = {"name": "det", "task": "detection", "folder": str(det_folder / "images")}
    cases = [
        ({}, "label_folder", "either the folder of KITTI label files"),
        ({"label_folder": str(det_folder / "labels"), "annotations_file": str(det_folder / "annotations.json")},
         "label_folder", "either the folder"),
        ({"annotations_file": "/etc/passwd"}, "annotations_file", "outside the allowed data roots"),
        ({"label_folder": str(det_folder / "labels"), "class_list": str(det_folder / "nothing.txt")}, "class_list", "does not exist"),
        ({"label_folder": str(det_folder / "labels"), "source": "upload"}, "upload", "Upload an archive first"),
        ({"label_folder": str(det_folder / "labels"), "source": "textfile"}, "source", "made from server folders"),
    ]
    for change, field, words in cases:
        response = api.post("/api/datasets/", {**base, **change}, format="json")
        assert response.status_code == 400, (change, response.content)
        assert field in response.json()["errors"] and words in response.json()["detail"], (change, response.json())
    assert not Dataset.objects.exists()


def test_boxes_move_with_every_resize_mode():
    # A box drawn on an image lands where the resized image has it, in every mode.
    for mode in ("squash", "crop", "fill", "half_crop"):
        pixels = np.zeros((60, 100), dtype=np.uint8)
        pixels[10:30, 20:50] = 1
        from datasets.imaging import resize_image

        out = np.asarray(resize_image(Image.fromarray(pixels, "L"), 40, 40, mode, pad=255))
        ys, xs = np.nonzero(out == 1)
        (box,), kept = resize_boxes(np.array([[20, 10, 50, 30]]), (100, 60), 40, 40, mode)
        assert list(kept) == [0]
        assert np.allclose(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1.0), (mode, box)
    # Cropped away entirely: left out.
    boxes, kept = resize_boxes(np.array([[0, 0, 10, 60], [45, 20, 55, 40]]), (100, 60), 40, 40, "crop")
    assert list(kept) == [1] and len(boxes) == 1


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_train_a_detector_watch_its_map_and_find_boxes(celery_worker_process, api, owner, data_root, tmp_path):
    det_folder = data_root / "det-train"
    write_shapes(det_folder, 160, 64, seed=12)
    body = {"name": "det", "task": "detection", "folder": str(det_folder), "annotations_file": str(det_folder / "annotations.json"),
            "image_width": 64, "image_height": 64, "val_percent": 25}
    response = api.post("/api/datasets/", body, format="json")
    assert response.status_code == 201, response.content
    dataset_id = wait_for_status(api, f"/api/datasets/{response.json()['id']}/", {"done"})["id"]
    refused = api.post("/api/models/", {"name": "m", "dataset": dataset_id, "network": "unet_small"}, format="json")
    assert refused.status_code == 400 and "pick a detection network" in refused.json()["detail"]
    refused = api.post("/api/models/", {"name": "m", "dataset": dataset_id, "network": "fcos_small", "crop_size": 48}, format="json")
    assert refused.status_code == 400 and "crop_size" in refused.json()["errors"]

    model = api.post("/api/models/", {
        "name": "fcos", "dataset": dataset_id, "network": "fcos_small", "epochs": 16, "batch_size": 8, "solver": "adam",
        "learning_rate": 0.001, "lr_policy": "cosine", "val_interval": 8, "snapshot_interval": 16, "flip": "h", "seed": 2,
    }, format="json")
    assert model.status_code == 201, model.content
    done = wait_for_status(api, f"/api/models/{model.json()['id']}/", {"done", "error"}, timeout=300)
    assert done["job"]["status"] == "done", done["job"]
    metrics = api.get(f"/api/models/{done['id']}/metrics/").json()
    assert [p["epoch"] for p in metrics["val_map50"]] == [8, 16]
    for p in metrics["val_map50"] + metrics["val_map"]:
        assert 0 <= p["value"] <= 1
    assert metrics["val_map"][-1]["value"] <= metrics["val_map50"][-1]["value"]  # a stricter overlap can only lower it
    # "Best" goes by mAP@0.5; it learns (from nothing: no weights were downloaded).
    assert metrics["val_map50"][-1]["value"] == metrics["val_accuracy"][-1]["value"] >= 0.3  # 0.57 here, from scratch
    losses = [p["value"] for p in metrics["train_loss"]]
    assert sum(losses[-10:]) < sum(losses[:10])
    per_class = [name for name in metrics if name.startswith("val_ap50/")]
    assert sorted(per_class) == ["val_ap50/0", "val_ap50/1", "val_ap50/2"] and "val_ap/0" in metrics
    assert metrics["val_loss"][-1]["value"] > 0

    # One image through the inference worker: the boxes found, drawn, surest first.
    with open(det_folder / "images" / "00007.png", "rb") as image:
        reply = api.post(f"/api/models/{done['id']}/classify/", {"image": image}, format="multipart")
    assert reply.status_code == 200, reply.content
    result = reply.json()
    assert result["detection"]["drawn"].startswith("data:image/png;base64,")
    scores = [o["score"] for o in result["detection"]["objects"]]
    assert scores  # the image's shapes are found
    assert scores == sorted(scores, reverse=True) and all(s >= 0.3 for s in scores)
    for o in result["detection"]["objects"]:
        assert o["label"] in CLASSES and len(o["box"]) == 4 and 0 <= o["box"][0] <= o["box"][2] <= 64
    client = Client()
    client.force_login(owner)
    with open(det_folder / "images" / "00007.png", "rb") as image:
        shown = client.post(f"/models/{done['id']}/classify/", {"image": image}).content.decode()
    assert 'id="detection-boxes"' in shown and 'id="detections"' in shown
    page = client.get(f"/models/{done['id']}/").content.decode()
    assert 'data-task="detection"' in page

    # ONNX export, checked image by image against PyTorch's detections; the archive's
    # script finds the same boxes as the inference worker, with torch and with onnxruntime alone.
    export = api.post(f"/api/models/{done['id']}/exports/", {}, format="json")
    assert export.status_code == 201, export.content
    export = wait_for_status(api, f"/api/exports/{export.json()['id']}/", {"done", "error"})
    assert export["job"]["status"] == "done", export["job"]
    checks = {c["format"]: c for c in export["checks"]}
    assert set(checks) == {"pytorch", "onnx"}  # torch.export cannot take a detector's post-processing
    assert checks["onnx"]["status"] == "passed" and checks["onnx"]["top1_agreement"] == 1.0, checks["onnx"]
    assert checks["onnx"]["max_abs_diff"] <= checks["onnx"]["tolerance"]
    from tests.test_export import _run_script, _untar

    folder = _untar(api.get(f"/api/models/{done['id']}/download/"), tmp_path / "archive")
    assert (folder / "model.onnx").exists() and '"boxes" (K x 4' in (folder / "README.txt").read_text()
    image = str(det_folder / "images" / "00007.png")
    (run,) = _run_script(folder, [image], "--json", "--out", str(tmp_path / "out"))
    (onnx_run,) = _run_script(folder, [image], "--json", "--out", str(tmp_path / "onnx"), block_torch=True)
    assert (run["runtime"], onnx_run["runtime"]) == ("torch", "onnx")
    assert [o["label"] for o in run["objects"]] == [o["label"] for o in result["detection"]["objects"]]
    assert [o["label"] for o in onnx_run["objects"]] == [o["label"] for o in run["objects"]]
    for mine, onnx_one, theirs in zip(run["objects"], onnx_run["objects"], result["detection"]["objects"]):
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-4)
        assert np.allclose(mine["box"], theirs["box"], atol=0.05)
        assert onnx_one["score"] == pytest.approx(mine["score"], abs=1e-3)
        assert np.allclose(onnx_one["box"], mine["box"], atol=0.05)
    triton = _untar(api.get(f"/api/models/{done['id']}/download/triton/"), tmp_path / "triton")
    assert 'name: "boxes"' in (triton / "config.pbtxt").read_text()
    assert Path(run["boxes_png"]).exists()

    # Evaluate on the validation split: the mAP of its last validation, every object
    # counted as found or missed, the worst images first.
    response = api.post(f"/api/models/{done['id']}/evaluations/", {"split": "val"}, format="json")
    assert response.status_code == 201, response.content
    evaluation = wait_for_status(api, f"/api/evaluations/{response.json()['id']}/", {"done", "error"})
    assert evaluation["job"]["status"] == "done", evaluation["job"]
    m = evaluation["metrics"]
    dataset = api.get(f"/api/datasets/{dataset_id}/").json()
    assert m["task"] == "detection" and m["images"] == dataset["counts"]["val"]
    assert m["map50"] == pytest.approx(metrics["val_map50"][-1]["value"], abs=0.01)
    assert m["map"] == pytest.approx(metrics["val_map"][-1]["value"], abs=0.01)
    assert m["objects"] == dataset["class_counts"]["val"]
    assert m["found"] + m["missed"] == sum(m["objects"]) and m["found"] > 0
    assert [v is not None for v in m["ap50"]] == [n > 0 for n in m["objects"]]
    worst = api.get(f"/api/evaluations/{evaluation['id']}/images/?per_page=200").json()
    assert worst["total"] == m["images"]
    rows = worst["images"]
    assert [r["score"] for r in rows] == sorted(r["score"] for r in rows)
    assert sum(r["found"] for r in rows) == m["found"] and sum(r["false_alarms"] for r in rows) == m["false_alarms"]
    for r in rows:  # each image's F1 over its found, missed and false boxes
        total = 2 * r["found"] + r["missed"] + r["false_alarms"]
        assert r["score"] == pytest.approx(2 * r["found"] / total if total else 1.0)
    drawn = api.get(rows[0]["image_url"])
    assert drawn.status_code == 200 and Image.open(io.BytesIO(drawn.content)).size == (256, 256)  # enlarged to read the names
    assert api.get(rows[0]["truth_url"]).status_code == 200
    lines = api.get(f"/api/evaluations/{evaluation['id']}/csv/").content.decode().splitlines()
    assert lines[0] == "index,image,f1,found,missed,false_alarms,detections" and len(lines) == m["images"] + 1
    page = client.get(f"/evaluations/{evaluation['id']}/").content.decode()
    assert 'id="map50"' in page and f"{m['found']} object" in page and "class-chart-data" in page
    shutil.rmtree(det_folder, ignore_errors=True)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_segmentation_and_detection_datasets_from_uploaded_archives(celery_worker_process, api, owner, tmp_path):
    import zipfile

    write_shapes(tmp_path / "shapes", 20, 32, seed=3)

    def upload(name: str, members: list[str]) -> str:
        archive = tmp_path / name
        with zipfile.ZipFile(archive, "w") as zf:
            for folder in members:
                for path in sorted((tmp_path / "shapes" / folder).rglob("*") if (tmp_path / "shapes" / folder).is_dir()
                                   else [tmp_path / "shapes" / folder]):
                    zf.write(path, f"shapes/{path.relative_to(tmp_path / 'shapes')}")  # a wrapping folder
        with archive.open("rb") as fh:
            response = api.post("/api/uploads/", {"file": fh}, format="multipart")
        assert response.status_code == 201, response.content
        return response.json()["id"]

    cases = [
        ("segmentation", ["images", "masks", "classes.txt"], None),
        ("detection", ["images", "labels"], None),
        ("detection", ["images", "annotations.json"], None),
        ("segmentation", ["images", "masks"], "The archive has no classes.txt"),
        ("detection", ["images"], "neither labels/ nor annotations.json"),
    ]
    for task, members, error in cases:
        body = {"name": f"{task}-zip", "task": task, "source": "upload", "upload": upload(f"{task}.zip", members),
                "image_width": 32, "image_height": 32, "val_percent": 25}
        response = api.post("/api/datasets/", body, format="json")
        assert response.status_code == 201, response.content
        data = wait_for_status(api, f"/api/datasets/{response.json()['id']}/", {"done", "error"})
        if error:
            assert data["job"]["status"] == "error" and error in data["job"]["error"], (members, data["job"])
            continue
        assert data["job"]["status"] == "done", (members, data["job"])
        assert data["counts"] == {"train": 15, "val": 5} and data["skipped"] == []
        assert data["labels"] == (list(CLASSES) if task == "segmentation" else
                                  sorted(CLASSES[1:]) if "labels" in members else list(CLASSES[1:]))
        assert sum(data["class_counts"]["train"]) > 0


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_custom_detector_trains_finds_boxes_and_is_evaluated(celery_worker_process, api, owner, data_root):
    """Custom code for detection, for a user with the permission: the small FCOS's own
    source, edited, trains in the child, finds boxes in the sandbox, and
    is evaluated on its split."""
    from models_app.networks import network_source
    from tests.test_model_api import grant_code_permission

    folder = data_root / "det-custom"
    write_shapes(folder, 48, 64, seed=21)
    body = {"name": "det", "task": "detection", "folder": str(folder / "images"), "label_folder": str(folder / "labels"),
            "image_width": 64, "image_height": 64, "val_percent": 25}
    dataset_id = wait_for_status(api, f"/api/datasets/{api.post('/api/datasets/', body, format='json').json()['id']}/", {"done"})["id"]
    code = network_source("fcos_small")
    code = code.replace("FCOS(", "FCOS(  # mine\n        ", 1)
    request = {"name": "mine", "dataset": dataset_id, "network": "custom", "custom_code": code, "epochs": 2, "batch_size": 8,
               "solver": "adam", "learning_rate": 0.001, "seed": 3,
               # The boxes move with every geometric augmentation (tests/test_units.py checks how).
               "flip": "hv", "rotate90": True, "rotation": 10, "scale_jitter": 0.2}
    refused = api.post("/api/models/", request, format="json")
    assert refused.status_code == 400 and "permission" in refused.json()["detail"]
    grant_code_permission(owner)
    model = api.post("/api/models/", request, format="json")
    assert model.status_code == 201, model.content
    done = wait_for_status(api, f"/api/models/{model.json()['id']}/", {"done", "error"}, timeout=300)
    assert done["job"]["status"] == "done", done["job"]
    metrics = api.get(f"/api/models/{done['id']}/metrics/").json()
    assert 0 <= metrics["val_map50"][-1]["value"] <= 1
    with open(folder / "images" / "00003.png", "rb") as image:  # user code runs in the sandbox child
        reply = api.post(f"/api/models/{done['id']}/classify/", {"image": image}, format="multipart")
    assert reply.status_code == 200, reply.content
    assert reply.json()["detection"]["drawn"].startswith("data:image/png;base64,")
    assert all(o["label"] in CLASSES for o in reply.json()["detection"]["objects"])
    response = api.post(f"/api/models/{done['id']}/evaluations/", {"split": "val"}, format="json")
    evaluation = wait_for_status(api, f"/api/evaluations/{response.json()['id']}/", {"done", "error"})
    assert evaluation["job"]["status"] == "done", evaluation["job"]
    assert evaluation["metrics"]["map50"] == pytest.approx(metrics["val_map50"][-1]["value"], abs=0.01)
    shutil.rmtree(folder, ignore_errors=True)


def test_the_evaluation_images_of_a_private_dataset_stay_private(owner, teammate, tmp_path):
    """A teammate who may see a model and its evaluation, but not its (private) dataset,
    sees the figures and none of the dataset's images, drawn or listed."""
    from tests.conftest import token_client
    from tests.factories import make_detection_dataset, make_spatial_evaluation
    from workers.models import Job

    write_shapes(tmp_path / "shapes", 12, 48, seed=3)
    dataset = make_detection_dataset(owner, tmp_path / "shapes")
    evaluation = make_spatial_evaluation(owner, dataset, "fcos_small")
    Job.objects.filter(pk=dataset.pk).update(visibility="private")
    mine, theirs = token_client(owner), token_client(teammate)
    assert theirs.get(f"/api/evaluations/{evaluation.pk}/").json()["metrics"]["images"] == 3
    for url in (f"/api/evaluations/{evaluation.pk}/images/", f"/api/evaluations/{evaluation.pk}/images/0/?show=truth",
                f"/api/evaluations/{evaluation.pk}/images/0/?show=prediction", f"/api/evaluations/{evaluation.pk}/csv/"):
        assert theirs.get(url).status_code == 404, url
        assert mine.get(url).status_code == 200, url
    page = Client()
    page.force_login(teammate)
    shown = page.get(f"/evaluations/{evaluation.pk}/").content.decode()
    assert 'id="map50"' in shown and "a dataset you may not see" in shown and "show=truth" not in shown
    assert page.get(f"/evaluations/{evaluation.pk}/images/0.img?show=truth").status_code == 404
