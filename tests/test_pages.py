"""Server-rendered pages: forms validate with field errors and create jobs."""
from __future__ import annotations

import time

import pytest
from django.test import Client

from datasets.models import Dataset
from tests.factories import make_dataset, make_model
from tests.imagegen import make_shapes_folder
from workers.models import Job

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def browser(owner) -> Client:
    client = Client()
    client.force_login(owner)
    return client


def test_dataset_form_shows_folder_error(browser, data_root):
    response = browser.post("/datasets/new/", {
        "name": "x", "folder": "/etc", "image_width": 28, "image_height": 28,
        "image_mode": "color", "resize_mode": "squash", "val_percent": 25,
    })
    assert response.status_code == 200
    assert "outside the allowed data roots" in response.context["form"].errors["folder"][0]
    assert not Job.objects.exists()


def test_dataset_form_builds_a_dataset(celery_worker_process, browser, data_root):
    # The worker runs it to the end: a job still running at teardown would race the flush.
    folder = make_shapes_folder(data_root / "page-form", per_class=2)
    response = browser.post("/datasets/new/", {
        "name": "from-form", "folder": str(folder), "image_width": 32, "image_height": 24,
        "image_mode": "grayscale", "resize_mode": "crop", "val_percent": 50,
    })
    dataset = Dataset.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/datasets/{dataset.pk}/"
    assert (dataset.image_width, dataset.image_height, dataset.channels, dataset.resize_mode) == (32, 24, 1, "crop")
    deadline = time.monotonic() + 60
    while Job.objects.get(pk=dataset.pk).status not in ("done", "error"):
        assert time.monotonic() < deadline, "the build did not finish"
        time.sleep(0.2)
    dataset.refresh_from_db()
    assert dataset.job.status == "done", dataset.job.error
    assert dataset.counts == {"train": 3, "val": 3}
    page = browser.get(f"/datasets/{dataset.pk}/").content.decode()
    assert 'id="split-counts"' in page and "class-chart" in page


def test_model_form_rejects_bad_learning_rate(browser, owner):
    dataset = make_dataset(owner)
    response = browser.post("/models/new/", {
        "name": "m", "dataset": dataset.pk, "network": "lenet", "solver": "sgd", "epochs": 5,
        "batch_size": 8, "learning_rate": 0, "momentum": 0.9, "weight_decay": 0, "seed": 0,
    })
    assert response.status_code == 200
    assert "learning_rate" in response.context["form"].errors


def test_console_lists_running_before_finished(browser, owner):
    dataset = make_dataset(owner, name="finished-ds")
    make_model(owner, dataset, name="running-model", status="running")
    response = browser.get("/")
    assert [j.name for j in response.context["active"]] == ["running-model"]
    assert [j.name for j in response.context["finished"]] == ["finished-ds"]


def test_error_page_shows_message_and_log_tail(browser, owner):
    dataset = make_dataset(owner)
    model = make_model(owner, dataset, status="error")
    Job.objects.filter(pk=model.pk).update(error="The loss became nan. Try decreasing the learning rate.")
    model.job.log_path.write_text("line one\nTraceback: boom\n")
    page = browser.get(f"/models/{model.pk}/").content.decode()
    assert "Try decreasing the learning rate" in page
    assert "Traceback: boom" in page


def test_model_page_says_it_waits_for_its_dataset(browser, owner):
    dataset = make_dataset(owner, name="still-building", status="running")
    model = make_model(owner, dataset, status="queued")
    page = browser.get(f"/models/{model.pk}/").content.decode()
    assert "Waiting for dataset" in page and "still-building" in page


@pytest.mark.django_db
def test_favicon_and_the_admin_lists(client, admin_user, owner):
    from tests.factories import make_dataset, make_model

    response = client.get("/favicon.ico")  # before login too
    assert response.status_code == 301 and response["Location"].endswith("img/favicon.svg")
    make_model(owner, make_dataset(owner, name="admin-ds"), name="admin-model")
    client.force_login(admin_user)
    for path in ("/admin/workers/job/", "/admin/workers/device/", "/admin/workers/allocation/", "/admin/datasets/dataset/",
                 "/admin/models_app/trainedmodel/", "/admin/models_app/snapshot/", "/admin/models_app/sweep/",
                 "/admin/workers/job/?status__exact=done&kind__exact=model"):
        response = client.get(path)
        assert response.status_code == 200, path
    assert "admin-model" in client.get("/admin/models_app/trainedmodel/").content.decode()


@pytest.mark.django_db
def test_the_dataset_form_offers_the_folders_under_the_data_roots(client, owner, data_root):
    (data_root / "cats-and-dogs" / "cats").mkdir(parents=True, exist_ok=True)
    (data_root / ".hidden").mkdir(exist_ok=True)
    client.force_login(owner)
    html = client.get("/datasets/new/").content.decode()
    options = html.split('<datalist id="data-folders">', 1)[1].split("</datalist>", 1)[0]
    assert f'value="{data_root}"' in options and f'value="{data_root / "cats-and-dogs" / "cats"}"' in options
    assert ".hidden" not in options and 'list="data-folders"' in html


@pytest.mark.django_db
def test_a_snapshot_rows_links_preselect_it(client, owner):
    from tests.factories import make_dataset, make_model

    model = make_model(owner, make_dataset(owner, name="pre"), epochs=3)
    client.force_login(owner)
    for given in ("2", "2.0"):  # the page's links and the live list's write it either way
        html = client.get(f"/models/{model.pk}/", {"epoch": given}).content.decode()
        classify = html.split('id="classify"', 1)[1].split("</form>", 1)[0]
        assert '<option value="2.0" selected>' in classify, given
