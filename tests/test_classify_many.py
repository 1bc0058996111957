"""Classify many (DIGITS' classify_many): a text list of `path [label]` lines on the server
and uploaded images and archives, through the real workers. Every line it cannot use is
reported on its own; the predictions match classify-one on the same files."""
from __future__ import annotations

import csv
import io
import random
import zipfile
from pathlib import Path

import pytest
from django.test import Client

from models_app.image_inputs import NO_LABEL, gather_files, parse_classify_list
from tests.conftest import token_client, wait_for_status
from tests.imagegen import shape_image
from tests.test_model_api import built_dataset, train

LABELS = ["circle", "square", "triangle"]


def _image(path: Path, kind: str = "circle", seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape_image(kind, random.Random(seed)).save(path)
    return path


def test_a_list_reports_each_line_it_cannot_use(tmp_path):
    root = tmp_path / "root"
    good = _image(root / "imgs" / "a.png")
    spaced = _image(root / "imgs" / "with space.png")
    (root / "imgs" / "notes.txt").write_text("x")
    outside = _image(tmp_path / "elsewhere" / "b.png")
    text = "\n".join([
        "# a comment",
        "imgs/a.png 1",  # 2: relative, a class index
        f"{spaced} triangle",  # 3: absolute, a class name, a space in the path
        "imgs/a.png",  # 4: no ground truth
        "imgs/a.png -1",  # 5: not a class: classified without it
        "imgs/a.png 3",  # 6: past the last class: classified without it
        "imgs/missing.png 0",  # 7
        f"{outside} 0",  # 8
        "imgs/notes.txt 0",  # 9
        "",
        "imgs/../imgs/a.png 2",  # 11: resolved, still under the root
    ])
    inputs, problems = parse_classify_list(text, LABELS, root, [root])
    assert [(i.line, i.label) for i in inputs] == [(2, 1), (3, 2), (4, NO_LABEL), (5, NO_LABEL), (6, NO_LABEL), (11, 2)]
    assert inputs[0].path == str(good) and inputs[1].path == str(spaced) and inputs[1].name == str(spaced)
    assert [(p.line, p.reason, p.classified) for p in problems] == [
        (5, "ground truth -1 is not a class (0 to 2); classified without it", True),
        (6, "ground truth 3 is not a class (0 to 2); classified without it", True),
        (7, "file not found", False),
        (8, "outside the allowed data roots", False),
        (9, "not an image file (by its extension)", False),
    ]
    # Without an image folder, relative lines cannot be placed.
    inputs, problems = parse_classify_list("imgs/a.png 1", LABELS, None, [root])
    assert inputs == [] and problems[0].reason == "a relative path, and no image folder was given"


def test_uploaded_files_take_ground_truth_from_class_folders(tmp_path):
    _image(tmp_path / "loose.png")
    _image(tmp_path / "batch" / "square" / "s1.png", "square")
    _image(tmp_path / "batch" / "wrap" / "triangle" / "t1.png", "triangle")
    _image(tmp_path / "batch" / "other" / "o.png")
    (tmp_path / "batch" / "readme.md").write_text("hi")
    inputs, problems = gather_files(tmp_path, LABELS)
    assert {i.name: i.label for i in inputs} == {
        "batch/other/o.png": NO_LABEL, "batch/square/s1.png": 1, "batch/wrap/triangle/t1.png": 2, "loose.png": NO_LABEL,
    }
    assert [(p.text, p.reason) for p in problems] == [("batch/readme.md", "not an image file (by its extension)")]


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_classify_many_from_a_list_and_from_uploads(celery_worker_process, api, owner, stranger, shapes_folder, data_root, tmp_path):
    dataset_id = built_dataset(api, shapes_folder)
    model = train(api, dataset_id, epochs=2)
    assert model["job"]["status"] == "done", model["job"]
    model_id = model["id"]

    # New images in a server folder under the data root, listed with mixed ground truth.
    folder = data_root / f"tolabel-{model_id}"
    files = {kind: [_image(folder / f"{kind}{i}.png", kind, seed=100 + i) for i in range(3)] for kind in LABELS}
    lines = [f"{kind}{i}.png {n}" for n, kind in enumerate(LABELS) for i in range(3)]  # 9 with ground truth
    lines += ["circle0.png", "square0.png -1", "triangle0.png 9", "nowhere.png 0", "/etc/hostname 0"]
    response = api.post(
        f"/api/models/{model_id}/evaluations/", {"image_list": "\n".join(lines), "image_folder": str(folder)}, format="json"
    )
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["source"] == "list" and created["description"].startswith("list (14 lines")
    done = wait_for_status(api, f"/api/evaluations/{created['id']}/", {"done", "error"})
    assert done["job"]["status"] == "done", done["job"]
    metrics = done["metrics"]
    assert metrics["images"] == 12 and metrics["labeled"] == 9 and metrics["problem_count"] == 4
    assert [(p["line"], p["classified"]) for p in metrics["problems"]] == [(11, True), (12, True), (13, False), (14, False)]
    assert "ground truth 9 is not a class" in metrics["problems"][1]["reason"]
    assert metrics["problems"][2]["reason"] == "file not found"
    assert metrics["problems"][3]["reason"] == "outside the allowed data roots"
    assert sum(metrics["per_class"]["support"]) == 9 and sum(map(sum, metrics["confusion"])) == 9
    assert "4 line(s) or file(s)" in done["job"]["timeline"][-1]["message"]

    # Each image's prediction is what classify-one says for the same file.
    every = api.get(f"/api/evaluations/{created['id']}/images/", {"view": "all", "per_page": 200}).json()
    assert every["total"] == 12
    for row in every["images"][:9:4]:
        path = folder / row["path"]
        with path.open("rb") as fh:
            one = api.post(f"/api/models/{model_id}/classify/", {"image": fh}, format="multipart").json()
        assert one["predictions"][0]["index"] == row["predicted"]
        assert one["predictions"][0]["probability"] == pytest.approx(row["confidence"], abs=2e-3)  # stored as float16
    unlabeled = [r for r in every["images"] if r["label"] == -1]
    assert len(unlabeled) == 3 and all(r["label_name"] is None for r in unlabeled)
    image = api.get(every["images"][0]["image_url"])
    assert image.status_code == 200 and image["Content-Type"] == "image/png"
    assert api.get(f"/api/evaluations/{created['id']}/images/99/").status_code == 404
    rows = list(csv.reader(io.StringIO(api.get(f"/api/evaluations/{created['id']}/csv/").content.decode())))
    assert len(rows) == 13 and sum(1 for r in rows[1:] if r[2] == "" and r[3] == "") == 3
    html = Client()
    html.force_login(owner)
    page = html.get(f"/evaluations/{created['id']}/").content.decode()
    assert 'id="problems"' in page and "file not found" in page and 'id="confusion"' in page

    # A folder outside the data roots is refused before anything runs.
    refused = api.post(f"/api/models/{model_id}/evaluations/", {"image_list": "a.png", "image_folder": "/etc"}, format="json")
    assert refused.status_code == 400 and "image_folder" in refused.json()["errors"]
    both = api.post(f"/api/models/{model_id}/evaluations/", {"image_list": "a.png", "split": "val"}, format="json")
    assert both.status_code == 400

    # Uploads: loose images (no ground truth) and a zip of class folders (ground truth).
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for kind in ("circle", "square"):
            for i in range(2):
                buffer = io.BytesIO()
                shape_image(kind, random.Random(i)).save(buffer, "PNG")
                zf.writestr(f"batch/{kind}/{i}.png", buffer.getvalue())
        zf.writestr("batch/notes.txt", "not an image")
    archive.seek(0)
    archive.name = "batch.zip"
    loose = [files["triangle"][0].open("rb"), files["triangle"][1].open("rb"), io.BytesIO(b"not an image at all")]
    loose[2].name = "broken.png"
    response = api.post(f"/api/models/{model_id}/evaluations/", {"images": [*loose, archive]}, format="multipart")
    for fh in loose[:2]:
        fh.close()
    assert response.status_code == 201, response.content
    uploaded = wait_for_status(api, f"/api/evaluations/{response.json()['id']}/", {"done", "error"})
    assert uploaded["job"]["status"] == "done", uploaded["job"]
    assert uploaded["source"] == "files" and "batch.zip" in uploaded["description"]
    metrics = uploaded["metrics"]
    assert metrics["images"] == 6 and metrics["labeled"] == 4
    reasons = {p["text"]: p["reason"] for p in metrics["problems"]}
    assert reasons["batch/batch/notes.txt"] == "not an image file (by its extension)"
    assert reasons["broken.png"].startswith("not a readable image")
    names = [r["path"] for r in api.get(f"/api/evaluations/{response.json()['id']}/images/", {"view": "all"}).json()["images"]]
    assert "triangle0.png" in names and "batch/batch/circle/0.png" in names
    # Teammates see it, the image too; only the owner deletes it.
    other = token_client(stranger)
    assert other.get(f"/api/evaluations/{response.json()['id']}/images/0/").status_code == 200
    assert other.delete(f"/api/evaluations/{response.json()['id']}/").status_code == 403
