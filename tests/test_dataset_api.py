"""Datasets through the real stack: REST endpoints (JSON), the Celery worker running the
build child, Postgres, and the pages for explore, edit, clone and preview."""
from __future__ import annotations

import base64
import time
import io
import shutil
import zipfile

import pytest
from PIL import Image

from datasets.models import Dataset, Upload
from tests.conftest import token_client, wait_for_status
from tests.factories import make_dataset, make_model
from tests.imagegen import make_shapes_folder
from workers.models import Job

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def folder(data_root, request):
    path = make_shapes_folder(data_root / f"api-{request.node.name}"[:80], per_class=10)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def create(api, **data):
    response = api.post("/api/datasets/", {"name": "ds", "image_width": 16, "image_height": 16, **data}, format="json")
    assert response.status_code == 201, response.content
    return wait_for_status(api, f"/api/datasets/{response.json()['id']}/", {"done", "error"}, timeout=120)


def test_folder_dataset_explore_edit_clone_and_delete(celery_worker_process, api, owner, teammate, folder):
    data = create(api, source="folder", folder=str(folder), val_percent=20, test_percent=10, encoding="jpeg",
                  jpeg_quality=80, group="shapes", notes="first try")
    assert data["job"]["status"] == "done", data["job"]["error"]
    assert data["counts"] == {"train": 21, "val": 6, "test": 3}
    assert data["class_counts"]["test"] == [1, 1, 1]
    assert data["job"]["group"] == "shapes" and data["encoding"] == "jpeg"
    pk = data["id"]

    # Explore, as JSON: paging and the class filter come from the stored label index.
    page1 = api.get(f"/api/datasets/{pk}/images/?split=train&label=1&per_page=4").json()
    assert (page1["total"], page1["pages"], len(page1["images"])) == (7, 2, 4)
    assert {img["label_name"] for img in page1["images"]} == {"square"}
    page2 = api.get(f"/api/datasets/{pk}/images/?split=train&label=1&per_page=4&page=2").json()
    assert len(page2["images"]) == 3
    assert not {i["index"] for i in page1["images"]} & {i["index"] for i in page2["images"]}
    image = api.get(page1["images"][0]["url"])
    assert image.status_code == 200 and image["Content-Type"] == "image/jpeg" and image["X-Label"] == "1"
    with Image.open(io.BytesIO(image.content)) as img:
        assert img.size == (16, 16)
    assert api.get(f"/api/datasets/{pk}/images/?split=nope").status_code == 404

    # The gallery page, for a teammate too.
    teammate_browser = _browser(teammate)
    page = teammate_browser.get(f"/datasets/{pk}/explore/?split=val&label=0")
    assert page.status_code == 200 and page.content.decode().count("<figure>") == 2
    img = teammate_browser.get(f"/datasets/{pk}/images/val/0.img")
    assert img.status_code == 200 and img["Content-Type"] == "image/jpeg"

    # Edit: the owner may, a teammate may not.
    assert token_client(teammate).patch(f"/api/datasets/{pk}/", {"name": "mine now"}, format="json").status_code == 403
    edited = api.patch(f"/api/datasets/{pk}/", {"name": "shapes v1", "notes": "checked"}, format="json").json()
    assert (edited["job"]["name"], edited["job"]["notes"], edited["job"]["group"]) == ("shapes v1", "checked", "shapes")

    # Clone (by a teammate): same parameters, same seed, so the very same split and bytes.
    response = token_client(teammate).post(f"/api/datasets/{pk}/clone/", {"name": "the clone"}, format="json")
    assert response.status_code == 201, response.content
    clone = wait_for_status(api, f"/api/datasets/{response.json()['id']}/", {"done", "error"}, timeout=120)
    assert clone["job"]["owner"] == "teammate" and clone["job"]["name"] == "the clone"
    same = ["source", "folder", "image_width", "image_height", "image_mode", "resize_mode", "encoding", "jpeg_quality",
            "val_percent", "test_percent", "seed", "labels", "counts", "class_counts", "mean_pixel"]
    assert {k: clone[k] for k in same} == {k: data[k] for k in same}
    for split, n in data["counts"].items():
        for index in range(n):
            a = api.get(f"/api/datasets/{pk}/images/{split}/{index}/")
            b = api.get(f"/api/datasets/{clone['id']}/images/{split}/{index}/")
            assert a.content == b.content and a["X-Label"] == b["X-Label"]

    # Delete is refused while a model uses the dataset, then works.
    original = Dataset.objects.get(pk=pk)
    model = make_model(owner, original, name="uses-it")
    refused = api.delete(f"/api/datasets/{pk}/")
    assert refused.status_code == 409 and "used by model(s) uses-it" in refused.json()["detail"]  # a conflict
    assert original.directory.exists()
    model.job.delete()
    assert api.delete(f"/api/datasets/{pk}/").status_code == 204
    assert not original.directory.exists()
    token_client(teammate).delete(f"/api/datasets/{clone['id']}/")


def test_text_lists_uploaded_with_the_request(celery_worker_process, api, folder):
    train = "\n".join(f"{cls}/{cls}_{i:04d}.png {n}" for n, cls in enumerate(("circle", "square", "triangle")) for i in range(8))
    val = "circle/circle_0008.png 0\nsquare/square_0008.png 1\ntriangle/triangle_0008.png 5\n"
    files = {
        "train_list_upload": _file("train.txt", train), "val_list_upload": _file("val.txt", val),
        "labels_file_upload": _file("labels.txt", "circle\nsquare\ntriangle\n"),
    }
    response = api.post("/api/datasets/", {
        "name": "lists", "source": "textfile", "image_folder": str(folder), "image_width": 12, "image_height": 12,
        "shuffle": "false", **files,
    }, format="multipart")
    assert response.status_code == 201, response.content
    data = wait_for_status(api, f"/api/datasets/{response.json()['id']}/", {"done", "error"}, timeout=120)
    assert data["job"]["status"] == "done", data["job"]["error"]
    assert data["counts"] == {"train": 24, "val": 2} and data["labels"] == ["circle", "square", "triangle"]
    assert data["skipped"] == [{"path": "val.txt:3 triangle/triangle_0008.png", "reason": "label index 5 out of range (0-2)"}]
    assert data["shuffle"] is False
    first = api.get(f"/api/datasets/{data['id']}/images/?split=train&per_page=8").json()["images"]
    assert [i["label"] for i in first] == [0] * 8  # list order kept


def test_text_list_source_needs_a_labels_file(api, folder):
    response = api.post("/api/datasets/", {
        "name": "lists", "source": "textfile", "train_list_upload": _file("train.txt", "a.png 0\n"),
    }, format="multipart")
    assert response.status_code == 400 and "labels file" in response.json()["detail"]
    assert not Job.objects.exists()


def test_resumable_archive_upload_then_build(celery_worker_process, api, owner, stranger, settings):
    settings.MAX_UPLOAD_CHUNK_BYTES = 512
    blob = _zip_of_classes(per_class=6, size=40)
    assert len(blob) > 3 * 512
    start = api.post("/api/uploads/", {"filename": "shapes.zip", "size": len(blob)}, format="json")
    assert start.status_code == 201 and start.json()["offset"] == 0
    uid = start.json()["id"]
    url = f"/api/uploads/{uid}/"

    def put(offset: int, chunk: bytes):
        return api.generic("PUT", url, chunk, content_type="application/octet-stream", HTTP_UPLOAD_OFFSET=str(offset))

    assert put(0, blob[:512]).json()["offset"] == 512
    # A chunk sent twice (the client never saw the answer) or out of order: refused with where to resume.
    again = put(0, blob[:512])
    assert again.status_code == 400 and "Resume from 512" in again.json()["detail"]
    assert put(512, blob[512:1112]).status_code == 400  # larger than a chunk may be
    # The stranger cannot see or extend it.
    assert token_client(stranger).get(url).status_code == 400
    # Resume from what the server says it has.
    offset = api.get(url).json()["offset"]
    while offset < len(blob):
        response = put(offset, blob[offset : offset + 512])
        assert response.status_code == 200, response.content
        offset = response.json()["offset"]
    assert api.get(url).json()["complete"] is True
    assert Upload.objects.get(pk=uid).path.read_bytes() == blob

    data = create(api, source="upload", upload=uid, val_percent=50)
    assert data["job"]["status"] == "done", data["job"]["error"]
    assert data["counts"] == {"train": 6, "val": 6} and data["labels"] == ["blue", "red"]
    assert data["upload"] == uid

    # The archive goes with the last dataset that used it.
    path = Upload.objects.get(pk=uid).path
    assert api.delete(f"/api/datasets/{data['id']}/").status_code == 204
    assert not Upload.objects.filter(pk=uid).exists() and not path.exists()


def test_upload_limits_and_validation(api, settings):
    settings.MAX_UPLOAD_ARCHIVE_BYTES = 1000
    too_big = api.post("/api/uploads/", {"filename": "big.zip", "size": 1001}, format="json")
    assert too_big.status_code == 400 and "the limit is" in too_big.json()["detail"]
    wrong_type = api.post("/api/uploads/", {"filename": "images.rar", "size": 10}, format="json")
    assert wrong_type.status_code == 400 and ".zip" in wrong_type.json()["detail"]
    # A whole (multipart) upload that is not an archive: refused, nothing kept.
    response = api.post("/api/uploads/", {"file": _file("fake.zip", "not a zip at all")}, format="multipart")
    assert response.status_code == 400 and "not a readable zip or tar archive" in response.json()["detail"]
    assert not Upload.objects.exists()
    # Building from an upload that is missing or unfinished.
    missing = api.post("/api/datasets/", {"name": "x", "source": "upload", "upload": "0" * 32}, format="json")
    assert missing.status_code == 400 and "Upload an archive first" in missing.json()["detail"]
    unfinished = api.post("/api/uploads/", {"filename": "part.zip", "size": 500}, format="json").json()
    response = api.post("/api/datasets/", {"name": "x", "source": "upload", "upload": unfinished["id"]}, format="json")
    assert response.status_code == 400 and "not finished (0 of 500 bytes)" in response.json()["detail"]
    assert not Job.objects.exists()


def test_whole_archive_upload_in_one_request(api):
    blob = _zip_of_classes(per_class=2, size=16)
    response = api.post("/api/uploads/", {"file": _file("small.zip", blob)}, format="multipart")
    assert response.status_code == 201, response.content
    assert response.json()["complete"] is True and response.json()["size"] == len(blob)


def test_resize_preview_for_a_folder_and_an_upload(owner, folder, api):
    browser = _browser(owner)
    response = browser.get("/datasets/preview/", {"folder": str(folder), "width": 20, "height": 10, "image_mode": "grayscale"})
    assert response.status_code == 200
    data = response.json()
    assert data["name"] == "circle/circle_0000.png" and data["original_size"] == [32, 32]
    assert set(data["modes"]) == {"squash", "crop", "fill", "half_crop"}
    for url in data["modes"].values():
        with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as img:
            assert img.size == (20, 10) and img.mode == "L"
    outside = browser.get("/datasets/preview/", {"folder": "/etc", "width": 20, "height": 10})
    assert outside.status_code == 400 and "outside the allowed data roots" in outside.json()["error"]

    upload = api.post("/api/uploads/", {"file": _file("p.zip", _zip_of_classes(2, 30))}, format="multipart").json()
    data = browser.get("/datasets/preview/", {"source": "upload", "upload": upload["id"], "width": 8, "height": 8}).json()
    assert data["name"] == "blue/0.png" and data["original_size"] == [30, 30]


def test_new_form_clone_prefill_and_edit_page(owner, stranger):
    dataset = make_dataset(owner, name="orig")
    Dataset.objects.filter(pk=dataset.pk).update(
        image_width=40, image_height=30, resize_mode="fill", encoding="none", test_percent=5, min_per_class=3, seed=9
    )
    browser = _browser(owner)
    form = browser.get(f"/datasets/new/?clone={dataset.pk}").context["form"]
    assert form["name"].value() == "orig (clone)"
    assert (form["image_width"].value(), form["image_height"].value(), form["resize_mode"].value()) == (40, 30, "fill")
    assert (form["encoding"].value(), form["test_percent"].value(), form["min_per_class"].value(), form["seed"].value()) == (
        "none", 5, 3, 9)

    response = browser.post(f"/datasets/{dataset.pk}/edit/", {"name": "renamed", "group": "g1", "notes": "n"})
    assert response.status_code == 302
    job = Job.objects.get(pk=dataset.pk)
    assert (job.name, job.group, job.notes) == ("renamed", "g1", "n")
    assert _browser(stranger).post(f"/datasets/{dataset.pk}/edit/", {"name": "x"}).status_code == 403
    page = browser.get(f"/datasets/{dataset.pk}/").content.decode()
    assert "renamed" in page and 'id="clone"' in page


# --- helpers -----------------------------------------------------------------------------


def _browser(user):
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client


def _file(name: str, content: str | bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, content.encode() if isinstance(content, str) else content)


def _zip_of_classes(per_class: int, size: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for cls, color in (("red", (230, 20, 20)), ("blue", (20, 20, 230))):
            for i in range(per_class):
                img = Image.new("RGB", (size, size), color)
                img.putpixel((i % size, 0), (255, 255, 255))
                png = io.BytesIO()
                img.save(png, "PNG")
                zf.writestr(f"{cls}/{i}.png", png.getvalue())
    return buf.getvalue()


def test_aborting_a_build_removes_its_partial_databases(celery_worker_process, api, data_root):
    folder = make_shapes_folder(data_root / "abort-build", per_class=300)
    try:
        response = api.post("/api/datasets/", {
            "name": "slow", "folder": str(folder), "image_width": 256, "image_height": 256, "encoding": "png",
        }, format="json")
        url = f"/api/datasets/{response.json()['id']}/"
        data = wait_for_status(api, url, {"running"}, timeout=60)
        directory = Dataset.objects.get(pk=data["id"]).directory
        deadline = time.monotonic() + 60
        while not (directory / "build.tmp" / "train_db").exists():
            assert time.monotonic() < deadline, "the build never started writing"
            time.sleep(0.05)
        assert api.post(url + "abort/").status_code == 200
        data = wait_for_status(api, url, {"aborted"}, timeout=30)
        # The worker cleans up once the child is gone. A child that finished its last
        # step as the abort came in has already moved its outputs in and removed
        # build.tmp itself, so wait for what matters: none of them left.
        partial = {"build.tmp", "train_db", "val_db", "mean.npy"}
        deadline = time.monotonic() + 30
        while partial & {p.name for p in directory.iterdir()} and time.monotonic() < deadline:
            time.sleep(0.1)
        left = sorted(p.name for p in directory.iterdir())
        assert not partial & set(left), left
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_console_filters_by_group(owner):
    a = make_dataset(owner, name="in-group")
    make_dataset(owner, name="other")
    Job.objects.filter(pk=a.pk).update(group="exp-1")
    page = _browser(owner).get("/?group=exp-1").content.decode()
    assert "in-group" in page and "other</a>" not in page and 'id="groups"' in page
    assert [j["name"] for j in token_client(owner).get("/api/jobs/?group=exp-1").json()["results"]] == ["in-group"]
