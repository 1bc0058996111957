"""Evaluations: the metrics as pure functions, and a snapshot evaluated on a split by the
real workers, checked against the same snapshot run here by hand; its images, CSV and page."""
from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from django.test import Client

from models_app.metrics import calibration, confusion_matrix, per_class, suspect_labels, top_k_accuracy
from tests.conftest import wait_for_status
from tests.test_model_api import built_dataset, train
from workers.models import Job


def test_confusion_matrix_and_per_class_scores():
    labels = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 1, 1])
    matrix = confusion_matrix(labels, predicted, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [0, 2, 0]]
    scores = per_class(matrix)
    assert scores["precision"] == [1.0, 0.4, None]  # nothing was predicted as class 2
    assert scores["recall"] == [0.5, 1.0, 0.0]
    assert scores["f1"][0] == pytest.approx(2 / 3) and scores["f1"][2] is None
    assert scores["support"] == [2, 2, 2]


def test_top_k_and_calibration_by_hand():
    probabilities = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1]])
    labels = np.array([0, 1, 1, 2])
    assert top_k_accuracy(probabilities, labels, 1) == 0.5
    assert top_k_accuracy(probabilities, labels, 2) == 0.75
    result = calibration(probabilities, labels, bins=10)
    # Bins (0.8, 0.9]: 1 right at 0.9; (0.6, 0.7]: 1 right at 0.7; (0.5, 0.6]: 1 wrong at 0.6; (0.4, 0.5]: 1 wrong at 0.5.
    assert result["ece"] == pytest.approx((0.1 + 0.3 + 0.6 + 0.5) / 4)
    assert sum(b["count"] for b in result["bins"]) == 4
    assert result["bins"][8]["accuracy"] == 1.0 and result["bins"][4]["accuracy"] == 0.0


def test_suspect_labels_find_a_flipped_label():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    probabilities = np.full((60, 3), 0.05)
    probabilities[np.arange(60), labels] = 0.9
    probabilities += rng.uniform(0, 0.01, size=probabilities.shape)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    flipped = 7  # a class-0 image labelled 2, which the model finds clearly class 0
    labels[flipped] = 2
    probabilities[flipped] = [0.97, 0.02, 0.01]
    suspects = suspect_labels(probabilities, labels)
    assert [s["position"] for s in suspects] == [flipped]
    assert suspects[0]["label"] == 2 and suspects[0]["suggested"] == 0


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_snapshot_evaluated_on_a_split(celery_worker_process, api, owner, shapes_folder):
    import torch

    from models_app.inference import load_network
    from models_app.models import TrainedModel
    from models_app.training.augment import BatchTransform, TransformSpec
    from models_app.training.data import Split

    dataset_id = built_dataset(api, shapes_folder)
    model = train(api, dataset_id, epochs=1)
    assert model["job"]["status"] == "done", model["job"]

    response = api.post(f"/api/models/{model['id']}/evaluations/", {"split": "test"}, format="json")
    assert response.status_code == 400 and response.json()["errors"]["split"]  # this dataset has no test split
    response = api.post(f"/api/models/{model['id']}/evaluations/", {"split": "val"}, format="json")
    assert response.status_code == 201, response.content
    evaluation_id = response.json()["id"]
    done = wait_for_status(api, f"/api/evaluations/{evaluation_id}/", {"done", "error"})
    assert done["job"]["status"] == "done", done["job"]
    metrics = done["metrics"]

    # The same snapshot over the same split, by hand here: the same predictions.
    trained = TrainedModel.objects.select_related("dataset").get(pk=model["id"])
    snapshot = trained.snapshots.order_by("-iteration").first()
    split = Split(trained.dataset.split_path("val"), cache_bytes=1 << 30, workers=0)
    assert split.images is not None and split.labels is not None
    transform = BatchTransform(TransformSpec(mean_subtraction=trained.mean_subtraction), trained.dataset.load_mean(), torch.device("cpu"))
    with torch.no_grad():
        predicted = load_network(snapshot)(transform.eval(split.images)).argmax(dim=1).numpy()
    labels = split.labels.numpy()
    expected = confusion_matrix(labels, predicted, 3)
    assert metrics["images"] == len(labels) == trained.dataset.counts["val"]
    assert metrics["confusion"] == expected.tolist()
    assert metrics["top1"] == pytest.approx(np.trace(expected) / len(labels))
    assert metrics["per_class"]["support"] == expected.sum(axis=1).tolist()
    assert done["epoch"] == snapshot.epoch and done["labels"] == ["circle", "square", "triangle"]

    # A confusion-matrix cell: exactly its images, most confident first.
    cell = api.get(f"/api/evaluations/{evaluation_id}/images/", {"view": "cell", "label": 0, "predicted": 0}).json()
    assert cell["total"] == expected[0, 0]
    assert all(r["label"] == 0 and r["predicted"] == 0 for r in cell["images"])
    assert all(r["path"].startswith("circle/") and r["path"].endswith(".png") for r in cell["images"])
    confidences = [r["confidence"] for r in cell["images"]]
    assert confidences == sorted(confidences, reverse=True)
    image = api.get(cell["images"][0]["image_url"])
    assert image.status_code == 200 and image["Content-Type"].startswith("image/")
    mistakes = api.get(f"/api/evaluations/{evaluation_id}/images/", {"view": "mistakes"}).json()
    assert mistakes["total"] == len(labels) - np.trace(expected)
    top = api.get(f"/api/evaluations/{evaluation_id}/images/", {"view": "top", "label": 1, "per_page": 200}).json()
    scores = [r["score"] for r in top["images"]]
    assert top["total"] == len(labels) and scores == sorted(scores, reverse=True)
    bad = api.get(f"/api/evaluations/{evaluation_id}/images/", {"view": "cell", "label": 9, "predicted": 0})
    assert bad.status_code == 400 and "label" in bad.json()["errors"]

    rows = list(csv.reader(io.StringIO(api.get(f"/api/evaluations/{evaluation_id}/csv/").content.decode())))
    assert rows[0][:5] == ["index", "image", "label", "correct", "prediction1"] and len(rows) == len(labels) + 1
    assert sum(int(r[3]) for r in rows[1:]) == np.trace(expected)
    # Each image's source file: in the folder of its given class.
    assert all(r[1].split("/")[0] == r[2] for r in rows[1:])

    # The page: the summary, the matrix's cells as links, a cell's images.
    client = Client()
    client.force_login(owner)
    html = client.get(f"/evaluations/{evaluation_id}/").content.decode()
    assert 'id="confusion"' in html and 'data-cell="0-0"' in html and 'id="calibration-data"' in html
    html = client.get(f"/evaluations/{evaluation_id}/", {"view": "cell", "label": 0, "predicted": 0}).content.decode()
    assert html.count("<figure class=\"right\">") == min(expected[0, 0], 48)
    assert f"evaluations/{evaluation_id}/" in client.get(f"/models/{model['id']}/").content.decode()

    # Deleting the model deletes its evaluations (jobs of their own) with it.
    assert api.delete(f"/api/models/{model['id']}/").status_code == 204
    assert not Job.objects.filter(pk=evaluation_id).exists()


def _stored_evaluation(owner, model, predicted, labels, epoch):
    from models_app.metrics import summarise
    from models_app.models import Evaluation
    from workers.models import JobEvent

    job = Job.objects.create(kind="evaluation", name=f"epoch {epoch}", owner=owner, status="done")
    JobEvent.objects.create(job=job, status="done")
    probabilities = np.full((len(labels), 3), 0.1, dtype=np.float32)
    probabilities[np.arange(len(labels)), predicted] = 0.8
    return Evaluation.objects.create(job=job, model=model, epoch=epoch, split="val", metrics=summarise(probabilities, labels))


@pytest.mark.django_db
def test_two_evaluations_side_by_side(api, owner, teammate):
    from tests.conftest import token_client
    from tests.factories import make_dataset, make_model

    dataset = make_dataset(owner)
    dataset.labels = ["circle", "square", "triangle"]
    dataset.save()
    model = make_model(owner, dataset)
    labels = np.repeat(np.arange(3), 4)
    before = _stored_evaluation(owner, model, np.array([0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 1, 1]), labels, 1)
    after = _stored_evaluation(owner, model, np.array([0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2]), labels, 2)
    # A teammate sees and compares (read-only).
    response = token_client(teammate).get("/api/evaluations/compare/", {"a": before.pk, "b": after.pk})
    assert response.status_code == 200, response.content
    data = response.json()
    assert data["top1"]["a"] == pytest.approx(7 / 12) and data["top1"]["delta"] == pytest.approx(4 / 12)
    assert data["confusion_delta"] == [[1, -1, 0], [0, 1, -1], [0, -2, 2]]
    triangle = data["classes"][2]
    assert triangle["recall_a"] == 0.5 and triangle["recall_b"] == 1.0 and triangle["recall_delta"] == 0.5
    assert data["note"] == ""

    other = make_dataset(owner, name="other")  # labels a, b
    foreign = _stored_evaluation(owner, make_model(owner, other, name="m2"), np.zeros(12, dtype=int), labels, 1)
    response = api.get("/api/evaluations/compare/", {"a": before.pk, "b": foreign.pk})
    assert response.status_code == 400 and "different classes" in response.json()["detail"]
    assert api.get("/api/evaluations/compare/", {"a": before.pk}).status_code == 400

    client = Client()
    client.force_login(owner)
    html = client.get("/evaluations/compare/", {"a": before.pk, "b": after.pk}).content.decode()
    assert 'id="confusion-delta"' in html and "+2" in html and 'id="class-deltas"' in html
