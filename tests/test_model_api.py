"""Models through the REST API on the real stack (Postgres, Redis, the Celery worker and
its child processes): every option, field errors, custom code and its permission,
visualize, clone identity, abort + resume, fine-tuning, the log and the catalogue."""
from __future__ import annotations

import io
import time

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from PIL import Image

from models_app.models import Metric
from tests.conftest import token_client, wait_for_status
from workers.models import Allocation
from tests.factories import make_dataset
from tests.test_training import CUSTOM, RUNTIME_ERROR

pytestmark = [pytest.mark.django_db(transaction=True)]


def grant_code_permission(user) -> None:
    user.user_permissions.add(Permission.objects.get(codename="submit_custom_network"))


def built_dataset(api, folder, **extra) -> int:
    body = {"name": "shapes", "folder": str(folder), "val_percent": 20, "image_width": 28, "image_height": 28, **extra}
    response = api.post("/api/datasets/", body, format="json")
    assert response.status_code == 201, response.content
    return wait_for_status(api, f"/api/datasets/{response.json()['id']}/", {"done"})["id"]


def train(api, dataset_id: int, statuses: set[str] | None = None, **extra) -> dict:
    body = {"name": "m", "dataset": dataset_id, "epochs": 2, "batch_size": 16, **extra}
    response = api.post("/api/models/", body, format="json")
    assert response.status_code == 201, response.content
    return wait_for_status(api, f"/api/models/{response.json()['id']}/", statuses or {"done", "error"})


def png_bytes() -> io.BytesIO:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buffer, "PNG")
    buffer.seek(0)
    buffer.name = "red.png"
    return buffer


@pytest.mark.e2e
def test_every_option_through_the_api(celery_worker_process, api, shapes_folder):
    dataset_id = built_dataset(api, shapes_folder)
    options = {
        "solver": "adam", "learning_rate": 0.002, "weight_decay": 0.0001, "lr_policy": "step", "lr_step_size": 50,
        "lr_gamma": 0.5, "lr_warmup_epochs": 0.5, "epochs": 3, "batch_size": 16, "batch_accumulation": 2,
        "val_interval": 0.5, "snapshot_interval": 1.5, "early_stopping_patience": 20, "crop_size": 24,
        "mean_subtraction": "pixel", "flip": "h", "rotation": 5, "scale_jitter": 0.1, "hsv_jitter": 0.05,
        "precision": "bf16", "seed": 5,
    }
    model = train(api, dataset_id, **options)
    assert model["job"]["status"] == "done", model["job"]
    assert {k: model[k] for k in options} == options
    # 240 training images, batches of 16 accumulated by 2: 8 iterations per epoch.
    assert [s["epoch"] for s in model["snapshots"]] == [1.5, 3.0]
    assert [s["iteration"] for s in model["snapshots"]] == [12, 24]
    assert all(s["val_top5"] == 1.0 for s in model["snapshots"])  # 3 classes: top-5 always hits
    assert any("Mixed precision (bf16) needs a GPU" in n for n in model["notices"])
    metrics = api.get(f"/api/models/{model['id']}/metrics/").json()
    assert [p["iteration"] for p in metrics["train_loss"]] == list(range(1, 25))
    assert [p["epoch"] for p in metrics["val_loss"]] == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert metrics["throughput"] and all(p["value"] > 0 for p in metrics["throughput"])
    assert metrics["lr"][0]["value"] == pytest.approx(0.002 / 4)  # warm-up: 4 iterations
    assert metrics["lr"][-1]["value"] == pytest.approx(0.001)  # one step down at 50 %
    # Classification uses the same crop and mean as validation.
    response = api.post(f"/api/models/{model['id']}/classify/", {"image": png_bytes()}, format="multipart")
    assert response.status_code == 200, response.content
    assert response.json()["epoch"] == 3.0 and len(response.json()["predictions"]) == 3
    # The raw log, as text and as a download.
    log = api.get(f"/api/jobs/{model['id']}/log/")
    assert log.status_code == 200 and b"models_app.training.train" in b"".join(log.streaming_content)
    download = api.get(f"/api/jobs/{model['id']}/log/?download=1")
    assert download["Content-Disposition"].startswith("attachment")


@pytest.mark.parametrize(
    "extra,field",
    [
        ({"epochs": 0}, "epochs"),
        ({"learning_rate": -1}, "learning_rate"),
        ({"batch_accumulation": 0}, "batch_accumulation"),
        ({"lr_policy": "bogus"}, "lr_policy"),
        ({"momentum": 1.5}, "momentum"),
        ({"solver": "lbfgs"}, "solver"),
        ({"rotation": 90}, "rotation"),
        ({"crop_size": 64}, "crop_size"),
        ({"lr_policy": "multistep", "lr_steps": "80,20"}, "lr_steps"),
        ({"solver": "nesterov", "momentum": 0}, "momentum"),
        ({"network": "vit_b_16"}, "network"),
        ({"network": "alexnet"}, "network"),
        ({"network": "custom", "custom_code": CUSTOM}, "custom_code"),
    ],
)
def test_bad_hyperparameters_are_field_errors(api, owner, extra, field):
    dataset = make_dataset(owner)  # 28x28
    response = api.post("/api/models/", {"name": "m", "dataset": dataset.pk, **extra}, format="json")
    assert response.status_code == 400, response.content
    assert list(response.json()["errors"]) == [field], response.json()


def test_the_form_shows_field_errors(owner):
    dataset = make_dataset(owner)
    client = Client()
    client.force_login(owner)
    page = client.get("/models/new/")
    assert page.status_code == 200 and b'id="lr-preview"' in page.content and b'value="custom"' not in page.content
    response = client.post("/models/new/", {"name": "m", "dataset": dataset.pk, "network": "vit_b_16", "solver": "sgd",
                                            "epochs": 1, "batch_size": 8, "batch_accumulation": 1, "learning_rate": 0.01,
                                            "momentum": 0.9, "weight_decay": 0, "seed": 0, "lr_policy": "fixed",
                                            "lr_step_size": 33, "lr_steps": "", "lr_gamma": 0.1, "lr_power": 1,
                                            "lr_warmup_epochs": 0, "val_interval": 1, "snapshot_interval": 1,
                                            "mean_subtraction": "image", "flip": "none", "rotation": 0, "scale_jitter": 0,
                                            "hsv_jitter": 0, "precision": "fp32"})
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert list(errors) == ["network"] and "multiple of 16" in errors["network"][0]


def test_custom_code_and_visualize_need_the_permission(api, owner):
    dataset = make_dataset(owner)
    body = {"dataset": dataset.pk, "network": "custom", "custom_code": CUSTOM}
    refused = api.post("/api/networks/visualize/", body, format="json")
    assert refused.status_code == 400 and "permission" in refused.json()["detail"]

    grant_code_permission(owner)
    api = token_client(type(owner).objects.get(pk=owner.pk))  # permissions are cached per user object
    shown = api.post("/api/networks/visualize/", body, format="json").json()
    assert shown["ok"] and shown["input_shape"] == [3, 28, 28]
    assert [(l["type"], l["output_shape"], l["params"]) for l in shown["layers"]] == [
        ("Flatten", [1, 3 * 28 * 28], 0), ("Linear", [1, 2], 3 * 28 * 28 * 2 + 2),
    ]
    broken = api.post("/api/networks/visualize/", {**body, "custom_code": "import torch\n\ndef build(a, b):\n    return torch.nn.Linear(\n"}, format="json").json()
    assert not broken["ok"] and broken["line"] == 4 and "SyntaxError" in broken["error"]
    lenet = api.post("/api/networks/visualize/", {"dataset": dataset.pk, "network": "lenet", "crop_size": 24}, format="json").json()
    assert lenet["ok"] and lenet["output_shape"] == [1, 2] and lenet["layers"][0]["output_shape"] == [1, 20, 20, 20]


@pytest.mark.e2e
def test_custom_networks_train_classify_and_report_the_users_line(celery_worker_process, owner, shapes_folder):
    grant_code_permission(owner)
    api = token_client(owner)
    dataset_id = built_dataset(api, shapes_folder)
    model = train(api, dataset_id, network="custom", custom_code=CUSTOM)
    assert model["job"]["status"] == "done", model["job"]
    # Classification runs the user's network in the sandbox child, not in the web server.
    response = api.post(f"/api/models/{model['id']}/classify/", {"image": png_bytes()}, format="multipart")
    assert response.status_code == 200, response.content
    assert sum(p["probability"] for p in response.json()["predictions"]) == pytest.approx(1.0, abs=1e-4)

    failed = train(api, dataset_id, network="custom", custom_code=RUNTIME_ERROR)
    assert failed["job"]["status"] == "error"
    assert failed["job"]["error"].startswith("Line 11 of your network code: Your network failed during training")
    browser = Client()
    browser.force_login(owner)
    assert b"Line 11 of your network code" in browser.get(f"/models/{failed['id']}/").content
    # Custom code that prints an event the relay cannot store: the job fails with the
    # reason, instead of staying "running" with its device held.
    event = '{"v": 1, "event": "train", "rows": [[1]]}'  # it decodes, but a row needs 3 parts
    header = "def build(input_shape, num_classes):"
    garbage = CUSTOM.replace(header, header + "\n    print(" + repr(event) + ", flush=True)")
    broken = train(api, dataset_id, network="custom", custom_code=garbage)
    assert broken["job"]["status"] == "error", broken["job"]
    assert broken["job"]["error"].startswith("The worker failed while running this job: ValueError")
    assert not Allocation.objects.filter(job_id=broken["id"], released_at__isnull=True).exists()


@pytest.mark.e2e
def test_clone_trains_the_identical_model(celery_worker_process, api, shapes_folder):
    dataset_id = built_dataset(api, shapes_folder)
    first = train(api, dataset_id, seed=3, flip="h", solver="rmsprop", learning_rate=0.001, lr_policy="cosine")
    response = api.post(f"/api/models/{first['id']}/clone/", {"name": "again"}, format="json")
    assert response.status_code == 201, response.content
    second = wait_for_status(api, f"/api/models/{response.json()['id']}/", {"done", "error"})
    assert second["job"]["name"] == "again"
    ignore = {"id", "job", "snapshots", "notices", "timings", "record"}  # the record names its own run (model id, folder)
    assert {k: v for k, v in first.items() if k not in ignore} == {k: v for k, v in second.items() if k not in ignore}
    curves = [api.get(f"/api/models/{m['id']}/metrics/").json() for m in (first, second)]
    for name in ("train_loss", "val_loss", "val_accuracy"):
        assert [p["value"] for p in curves[0][name]] == [p["value"] for p in curves[1][name]], name


@pytest.mark.e2e
def test_abort_then_resume_continues_the_same_curves(celery_worker_process, api, owner, stranger, shapes_folder):
    dataset_id = built_dataset(api, shapes_folder)
    response = api.post("/api/models/", {"name": "long", "dataset": dataset_id, "epochs": 60, "batch_size": 16,
                                         "snapshot_interval": 3, "val_interval": 3}, format="json")
    model_id = response.json()["id"]
    deadline = time.monotonic() + 120
    while not api.get(f"/api/models/{model_id}/").json()["snapshots"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert api.post(f"/api/models/{model_id}/abort/").status_code == 200
    aborted = wait_for_status(api, f"/api/models/{model_id}/", {"aborted"})
    kept = aborted["snapshots"][-1]
    if kept["epoch"] == 60:
        pytest.fail("training finished before the abort; make the run longer")
    # Not the owner: refused. The owner resumes.
    assert token_client(stranger).post(f"/api/models/{model_id}/resume/").status_code == 403
    resumed = api.post(f"/api/models/{model_id}/resume/")
    assert resumed.status_code == 200 and resumed.json()["job"]["status"] == "queued"
    done = wait_for_status(api, f"/api/models/{model_id}/", {"done", "error"})
    assert done["job"]["status"] == "done", done["job"]
    assert any(n.startswith(f"Resumed from the snapshot at epoch {kept['epoch']:g}") for n in done["notices"])
    statuses = [e["status"] for e in done["job"]["timeline"]]
    assert statuses[-4:] == ["aborted", "queued", "running", "done"]
    # The chart goes on without a gap or a duplicate: 15 iterations per epoch.
    iterations = list(Metric.objects.filter(model_id=model_id, name="train_loss").values_list("iteration", flat=True))
    assert sorted(iterations) == list(range(1, 60 * 15 + 1))
    assert [s["epoch"] for s in done["snapshots"]] == [float(e) for e in range(3, 61, 3)]
    again = api.post(f"/api/models/{model_id}/resume/")
    assert again.status_code == 400 and "Only an aborted, failed or timed-out model" in again.json()["detail"]


@pytest.mark.e2e
def test_fine_tune_from_a_snapshot_survives_deleting_the_base(celery_worker_process, api, shapes_folder):
    dataset_id = built_dataset(api, shapes_folder)
    base = train(api, dataset_id, epochs=2)
    missing = api.post("/api/models/", {"name": "ft", "dataset": dataset_id, "base_model": base["id"], "base_epoch": 7}, format="json")
    assert missing.status_code == 400 and "no snapshot for epoch 7" in missing.json()["errors"]["base_epoch"][0]
    tuned = train(api, dataset_id, base_model=base["id"], base_epoch=1, network="alexnet", learning_rate=0.001)
    assert tuned["job"]["status"] == "done", tuned["job"]
    # The network comes from the base model, whatever the request said.
    assert tuned["network"] == "lenet" and tuned["base_epoch"] == 1.0
    assert tuned["notices"][0] == f"Fine-tuning from model {base['id']}, epoch 1: every layer was loaded."
    assert api.delete(f"/api/models/{base['id']}/").status_code == 204
    after = api.get(f"/api/models/{tuned['id']}/").json()
    assert after["base_model"] is None
    response = api.post(f"/api/models/{tuned['id']}/classify/", {"image": png_bytes()}, format="multipart")
    assert response.status_code == 200


def test_network_catalogue_source_and_lr_preview(api):
    catalogue = api.get("/api/networks/").json()
    by_task: dict[str, list[str]] = {}
    for n in catalogue:
        by_task.setdefault(n["task"], []).append(n["name"])
    assert by_task == {
        "classification": ["lenet", "alexnet", "googlenet", "resnet18", "resnet50", "mobilenet_v3", "efficientnet_b0", "vit_b_16"],
        "segmentation": ["unet_small", "fcn_resnet50", "deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50", "lraspp_mobilenet_v3_large"],
        "detection": ["fcos_small", "fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn", "fcos_resnet50_fpn", "ssdlite320_mobilenet_v3_large"],
    }
    assert catalogue[0]["intended_input"] == [28, 28] and catalogue[7]["intended_input"] == [224, 224]
    source = api.get("/api/networks/resnet18/").json()["source"]
    assert "def build(input_shape" in source and "resnet18" in source
    assert api.get("/api/networks/nope/").status_code == 404
    preview = api.get("/api/lr-preview/", {"lr_policy": "step", "learning_rate": 0.1, "lr_step_size": 50, "lr_gamma": 0.1, "epochs": 4}).json()
    points = preview["points"]
    assert len(points) == 200 and points[0] == [0.0, 0.1] and points[-1] == [3.98, pytest.approx(0.01)]
    assert points[99][1] == pytest.approx(0.1) and points[100][1] == pytest.approx(0.01)
    bad = api.get("/api/lr-preview/", {"lr_policy": "multistep", "lr_steps": "90,10"})
    assert bad.status_code == 400 and "increasing order" in bad.json()["detail"]


def test_stranger_cannot_edit_or_resume_but_reads(owner, stranger):
    from tests.factories import make_model

    model = make_model(owner, make_dataset(owner), status="aborted")
    other = token_client(stranger)
    assert other.get(f"/api/models/{model.pk}/").status_code == 200
    assert other.patch(f"/api/models/{model.pk}/", {"name": "x"}, format="json").status_code == 403
    assert other.post(f"/api/models/{model.pk}/resume/").status_code == 403
    owner_api = token_client(owner)
    edited = owner_api.patch(f"/api/models/{model.pk}/", {"name": "renamed", "group": "g1"}, format="json").json()
    assert edited["job"]["name"] == "renamed" and edited["job"]["group"] == "g1"


@pytest.mark.e2e
def test_a_waiting_model_fails_with_the_reason_when_its_dataset_fails(celery_worker_process, api, owner):
    from workers.transitions import job_fail

    dataset = make_dataset(owner, name="still-building", status="running")
    response = api.post("/api/models/", {"name": "waits", "dataset": dataset.pk}, format="json")
    assert response.status_code == 201, response.content
    model_id = response.json()["id"]
    time.sleep(2)  # the worker has picked it up and waits
    assert api.get(f"/api/models/{model_id}/").json()["job"]["status"] == "queued"
    job_fail(dataset.pk, "No usable images: every file was corrupt.")
    failed = wait_for_status(api, f"/api/models/{model_id}/", {"error", "done"}, timeout=30)
    assert failed["job"]["status"] == "error"
    assert failed["job"]["error"] == "Dataset 'still-building' did not build (error): No usable images: every file was corrupt."
