"""Importing a model trained elsewhere: an archive downloaded from this system, or a
PyTorch state dict with its network's name. A good one classifies as the original did and
can be evaluated, exported and fine-tuned; a malformed one is refused with the reason and
leaves nothing behind."""
from __future__ import annotations

import io
import tarfile

import pytest
from django.conf import settings
from django.test import Client

from models_app.models import TrainedModel
from tests.conftest import token_client, wait_for_status
from tests.factories import make_dataset
from tests.test_model_api import built_dataset, png_bytes, train
from workers.models import Job


def _weights(network: str, shape: tuple[int, int, int], classes: int, **wrap) -> io.BytesIO:
    import torch

    from models_app.networks import network_module

    torch.manual_seed(0)
    state = network_module(network).build(shape, classes).state_dict()
    if wrap.get("ddp"):
        state = {f"module.{k}": v for k, v in state.items()}
    buffer = io.BytesIO()
    torch.save({"state_dict": state} if wrap.get("nested") else state, buffer)
    buffer.seek(0)
    return buffer


def _named(data: bytes | io.BytesIO, name: str) -> io.BytesIO:
    buffer = data if isinstance(data, io.BytesIO) else io.BytesIO(data)
    buffer.name = name
    return buffer


def _nothing_left(before_jobs: int, before_dirs: set[str]) -> None:
    assert Job.objects.count() == before_jobs
    assert {p.name for p in settings.JOBS_DIR.iterdir()} == before_dirs


@pytest.mark.django_db(transaction=True)
def test_a_state_dict_imports_and_a_bad_upload_leaves_nothing(owner):
    api = token_client(owner)
    dataset = make_dataset(owner, name="tiny")
    type(dataset).objects.filter(pk=dataset.pk).update(image_width=64, image_height=64)
    settings.JOBS_DIR.mkdir(parents=True, exist_ok=True)
    jobs, dirs = Job.objects.count(), {p.name for p in settings.JOBS_DIR.iterdir()}

    def post(file, **extra):
        return api.post("/api/models/import/", {"name": "imported", "dataset": dataset.pk, "file": file, **extra}, format="multipart")

    # Refused, each with its reason, and nothing stored.
    refused = post(_named(b"hello", "notes.txt"))
    assert refused.status_code == 400 and "archive downloaded from a model" in refused.json()["errors"]["file"][0]
    refused = post(_named(b"\x1f\x8b garbage", "model.tar.gz"))
    assert refused.status_code == 400 and "not a .tar.gz or .zip" in refused.json()["errors"]["file"][0]
    refused = post(_named(_weights("lenet", (3, 64, 64), 2), "lenet.pt"))
    assert refused.status_code == 400 and "Name the network" in refused.json()["errors"]["network"][0]
    refused = post(_named(_weights("lenet", (3, 64, 64), 2), "lenet.pt"), network="resnet18")
    message = refused.json()["errors"]["file"][0]
    assert refused.status_code == 400 and "do not fit resnet18 with input 3x64x64" in message and "missing layers" in message
    refused = post(_named(_weights("lenet", (3, 32, 32), 2), "lenet32.pt"), network="lenet")
    message = refused.json()["errors"]["file"][0]
    assert refused.status_code == 400 and "shapes differ" in message
    refused = post(_named(b"PK\x03\x04 not really", "weights.pth"), network="lenet")
    assert refused.status_code == 400 and "not a PyTorch weights file" in refused.json()["errors"]["file"][0]
    empty = io.BytesIO()
    with tarfile.open(fileobj=empty, mode="w:gz") as tar:
        member = tarfile.TarInfo("x/readme.txt")
        member.size = 2
        tar.addfile(member, io.BytesIO(b"hi"))
    refused = post(_named(empty.getvalue(), "noinfo.tar.gz"))
    assert refused.status_code == 400 and "no info.json" in refused.json()["errors"]["file"][0]
    _nothing_left(jobs, dirs)

    # A state dict, wrapped as checkpoints often are and with DDP's prefix: imported.
    response = post(_named(_weights("lenet", (3, 64, 64), 2, ddp=True, nested=True), "lenet.pth"), network="lenet",
                    mean_subtraction="none")
    assert response.status_code == 201, response.content
    model = response.json()
    assert model["job"]["status"] == "done" and model["imported_from"] == "lenet.pth"
    assert model["network"] == "lenet" and model["mean_subtraction"] == "none" and [s["epoch"] for s in model["snapshots"]] == [0]
    assert "Imported from lenet.pth" in model["notices"][0]
    # Weights for another class count (as torchvision's 1000): the rest loads, the
    # classifier starts afresh, and the model says so.
    response = post(_named(_weights("lenet", (3, 64, 64), 10), "lenet10.pt"), network="lenet")
    assert response.status_code == 201, response.content
    notices = response.json()["notices"]
    assert "were for 10 classes" in notices[1] and "classifier.3.weight" in notices[1]

    page = Client()
    page.force_login(owner)
    html = page.get(f"/models/{model['id']}/").content.decode()
    assert 'id="imported-from"' in html and "loss-chart" not in html
    # The page form re-shows a refusal with its message.
    html = page.post("/models/import/", {"name": "x", "dataset": dataset.pk, "file": _named(b"junk", "x.zip")}).content.decode()
    assert "not a .tar.gz or .zip archive" in html and 'id="import-form"' in html


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_an_archive_round_trips_and_is_used_like_a_trained_model(celery_worker_process, api, owner, shapes_folder, tmp_path):
    dataset_id = built_dataset(api, shapes_folder)
    original = train(api, dataset_id, epochs=1)
    assert original["job"]["status"] == "done", original["job"]
    archive = b"".join(api.get(f"/api/models/{original['id']}/download/").streaming_content)

    response = api.post(
        "/api/models/import/", {"name": "round trip", "dataset": dataset_id, "file": _named(archive, "m.tar.gz")}, format="multipart"
    )
    assert response.status_code == 201, response.content
    imported = response.json()
    assert imported["network"] == "lenet" and [s["epoch"] for s in imported["snapshots"]] == [1]
    assert imported["snapshots"][0]["val_accuracy"] == original["snapshots"][-1]["val_accuracy"]

    # It classifies exactly as the original.
    answers = []
    for model_id in (original["id"], imported["id"]):
        reply = api.post(f"/api/models/{model_id}/classify/", {"image": png_bytes()}, format="multipart")
        assert reply.status_code == 200, reply.content
        answers.append([(p["label"], round(p["probability"], 5)) for p in reply.json()["predictions"]])
    assert answers[0] == answers[1]

    # Evaluated and exported like any model.
    evaluation = api.post(f"/api/models/{imported['id']}/evaluations/", {"split": "val"}, format="json").json()
    export = api.post(f"/api/models/{imported['id']}/exports/", {}, format="json").json()
    evaluation = wait_for_status(api, f"/api/evaluations/{evaluation['id']}/", {"done", "error"})
    export = wait_for_status(api, f"/api/exports/{export['id']}/", {"done", "error"})
    assert evaluation["job"]["status"] == "done" and evaluation["metrics"]["images"] == 60
    assert evaluation["metrics"]["top1"] == pytest.approx(original["snapshots"][-1]["val_accuracy"], abs=1e-6)
    assert {c["format"]: c["status"] for c in export["checks"]} == {"pytorch": "reference", "onnx": "passed", "pt2": "passed"}

    # Fine-tuned: every layer loads from the imported weights.
    tuned = train(api, dataset_id, epochs=1, base_model=imported["id"], base_epoch=1)
    assert tuned["job"]["status"] == "done", tuned["job"]
    assert any("every layer was loaded" in n for n in tuned["notices"])

    # A dataset with other classes is refused, naming the dataset field.
    other = make_dataset(owner, name="two classes")
    refused = api.post("/api/models/import/", {"name": "x", "dataset": other.pk, "file": _named(archive, "m.tar.gz")},
                       format="multipart")
    assert refused.status_code == 400 and "has 3 classes" in refused.json()["errors"]["dataset"][0]
    assert "dataset 'two classes' has 2" in refused.json()["errors"]["dataset"][0]
    assert TrainedModel.objects.filter(imported_from="m.tar.gz").count() == 1
