"""Bad requests get a clear 400 (or a job error with a message) and leave nothing behind."""
from __future__ import annotations

import os
import shutil

import pytest

from datasets.models import Dataset
from tests.conftest import wait_for_status
from tests.factories import make_dataset, make_model
from tests.imagegen import make_shapes_folder
from workers.models import Job

pytestmark = pytest.mark.django_db(transaction=True)


def post_dataset(api, folder, **extra):
    return api.post("/api/datasets/", {"name": "bad", "folder": str(folder), **extra}, format="json")


def test_folder_that_does_not_exist(api, data_root):
    response = post_dataset(api, data_root / "no-such-folder")
    assert response.status_code == 400
    assert "does not exist" in response.json()["detail"]
    assert not Job.objects.exists()


def test_folder_outside_allowed_roots(api, tmp_path):
    make_shapes_folder(tmp_path / "elsewhere", per_class=2)
    response = post_dataset(api, tmp_path / "elsewhere")
    assert response.status_code == 400
    assert "outside the allowed data roots" in response.json()["detail"]
    assert not Job.objects.exists()


def test_dotdot_and_symlink_cannot_escape_roots(api, data_root, tmp_path):
    secret = make_shapes_folder(tmp_path / "secret", per_class=2)
    # A path that starts inside the root but climbs out of it with `..`.
    dotdot = f"{data_root}/{os.path.relpath(secret, data_root)}"
    assert dotdot.startswith(str(data_root)) and ".." in dotdot
    response = post_dataset(api, dotdot)
    assert response.status_code == 400
    assert "outside the allowed data roots" in response.json()["detail"]
    link = data_root / "link-out"
    link.symlink_to(tmp_path / "secret")
    try:
        response = post_dataset(api, link)
        assert response.status_code == 400
        assert "outside the allowed data roots" in response.json()["detail"]
    finally:
        link.unlink()
    assert not Job.objects.exists()


def test_folder_with_one_class(api, data_root):
    folder = make_shapes_folder(data_root / "one-class", per_class=3, classes=("circle",))
    try:
        response = post_dataset(api, folder)
    finally:
        shutil.rmtree(folder)
    assert response.status_code == 400
    assert "at least two classes" in response.json()["detail"]


def test_bad_dataset_parameters_are_field_errors(api, data_root):
    response = post_dataset(api, data_root, image_width=0, val_percent=150)
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"image_width", "val_percent"}


def test_non_images_and_corrupt_files_are_skipped_and_reported(celery_worker_process, api, data_root):
    folder = make_shapes_folder(data_root / "mixed", per_class=10, classes=("circle", "square"))
    (folder / "circle" / "notes.txt").write_text("not an image")
    (folder / "square" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    try:
        response = post_dataset(api, folder, val_percent=20)
        assert response.status_code == 201
        data = wait_for_status(api, f"/api/datasets/{response.json()['id']}/", {"done", "error"})
    finally:
        shutil.rmtree(folder)
    assert data["job"]["status"] == "done", data["job"]
    assert data["counts"] == {"train": 16, "val": 4}
    reasons = {s["path"]: s["reason"] for s in data["skipped"]}
    assert set(reasons) == {"circle/notes.txt", "square/broken.png"}
    assert "not an image file" in reasons["circle/notes.txt"]
    assert "not a readable image" in reasons["square/broken.png"]
    assert "2 file(s) skipped" in data["job"]["timeline"][-1]["message"]


def test_all_corrupt_images_fail_with_a_message_and_leave_no_databases(celery_worker_process, api, data_root):
    folder = data_root / "corrupt"
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        for i in range(3):
            (folder / cls / f"{i}.jpg").write_bytes(b"not really a jpeg")
    try:
        response = post_dataset(api, folder)
        assert response.status_code == 201
        data = wait_for_status(api, f"/api/datasets/{response.json()['id']}/", {"done", "error"})
    finally:
        shutil.rmtree(folder)
    assert data["job"]["status"] == "error"
    assert "Fewer than two classes have usable images" in data["job"]["error"]
    assert "not a readable image" in data["job"]["error"]
    directory = Dataset.objects.get(pk=data["id"]).directory
    leftovers = {p.name for p in directory.iterdir()} - {"job.log", "spec.json"}
    assert leftovers == set()


def test_model_on_missing_dataset(api):
    response = api.post("/api/models/", {"name": "m", "dataset": 999999}, format="json")
    assert response.status_code == 400
    assert "does not exist" in response.json()["errors"]["dataset"][0]
    assert not Job.objects.exists()


def test_bad_hyperparameters_are_field_errors(api, owner):
    dataset = make_dataset(owner)
    response = api.post(
        "/api/models/", {"name": "m", "dataset": dataset.pk, "epochs": 0, "learning_rate": -1, "batch_size": "x"}, format="json"
    )
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"epochs", "learning_rate", "batch_size"}
    assert Job.objects.count() == 1  # only the dataset


def test_model_on_failed_dataset_is_refused(api, owner):
    dataset = make_dataset(owner, status="error")
    response = api.post("/api/models/", {"name": "m", "dataset": dataset.pk}, format="json")
    assert response.status_code == 400
    assert "did not build" in response.json()["errors"]["dataset"][0]


def test_classify_rejects_a_non_image(api, owner, tmp_path):
    dataset = make_dataset(owner)
    model = make_model(owner, dataset)
    bogus = tmp_path / "x.png"
    bogus.write_bytes(b"hello")
    with bogus.open("rb") as fh:
        response = api.post(f"/api/models/{model.pk}/classify/", {"image": fh}, format="multipart")
    assert response.status_code == 400
    assert response.json()["detail"].startswith("Could not classify this file: not a readable image")


@pytest.mark.django_db
def test_numbers_in_addresses_that_are_digits_but_not_decimal_are_not_server_errors(owner):
    """"²" passes str.isdigit() but int() refuses it: every number read from an address is
    checked with isdecimal(), so such a value is ignored or refused, never a 500."""
    from django.test import Client

    from tests.conftest import token_client

    dataset = make_dataset(owner)
    model = make_model(owner, dataset)
    client = Client()
    client.force_login(owner)
    api = token_client(owner)
    pages = [
        "/models/?dataset=²", "/evaluations/compare/?a=²", "/evaluations/compare/?a=²&b=1", "/models/compare/?ids=1,²",
        "/models/new/?clone=²", "/models/new/?base_model=²", "/datasets/new/?clone=²",
        f"/datasets/{dataset.pk}/explore/?label=²&page=²",
    ]
    calls = [
        f"/api/models/{model.pk}/metrics/?max_points=²&after=²", f"/api/models/{model.pk}/metrics/points/?after=²&limit=²",
        f"/api/jobs/{model.pk}/log/?offset=²", f"/api/datasets/{dataset.pk}/images/?label=²",
    ]
    for url in pages:
        assert client.get(url).status_code < 500, url
    for url in calls:
        assert api.get(url).status_code < 500, url
    # This dataset's record says "built", but its files are not in the data folder.
    lost = client.get(f"/datasets/{dataset.pk}/explore/")
    assert lost.status_code == 404 and "missing from the data folder" in lost.content.decode()
