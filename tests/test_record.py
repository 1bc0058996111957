"""Each run's reproducibility record (versions, devices, seed, the resolved spec, the
dataset's content checksums, the code's version) and "rerun exactly": the same curves."""
from __future__ import annotations

import pytest
import torch
from django.test import Client

from datasets.lmdb_store import content_digest
from models_app.models import TrainedModel
from tests.conftest import wait_for_status
from tests.test_model_api import built_dataset, train

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_a_run_records_how_to_reproduce_it_and_reruns_exactly(celery_worker_process, api, owner, shapes_folder):
    dataset_id = built_dataset(api, shapes_folder)
    dataset = api.get(f"/api/datasets/{dataset_id}/").json()
    model = train(api, dataset_id, epochs=1, seed=1234, learning_rate=0.02)
    assert model["job"]["status"] == "done", model["job"]
    record = model["record"]
    assert record["torch"] == torch.__version__ and record["seed"] == 1234 and record["python"]
    assert record["spec"]["learning_rate"] == 0.02 and record["spec"]["momentum"] == 0.9  # defaults written out
    assert record["spec"]["output_dir"] and "provenance" not in record["spec"]
    assert record["code"].startswith(("git ", "digits-ng "))
    from datasets.models import Dataset

    stored = Dataset.objects.get(pk=dataset_id)
    assert record["dataset"]["checksums"] == stored.checksums
    assert stored.checksums["train"] == content_digest(stored.split_path("train")) != stored.checksums["val"]
    assert record["device"].startswith("CPU") and record["world_size"] == 1
    readings = api.get(f"/api/models/{model['id']}/metrics/").json()
    assert readings["cpu_percent:r0"] and readings["rss_mb:r0"][0]["value"] > 50  # the device, charted beside the metrics
    assert dataset["job"]["status"] == "done"

    client = Client()
    client.force_login(owner)
    page = client.get(f"/models/{model['id']}/").content.decode()
    assert 'id="record"' in page and "1234" in page and stored.checksums["train"][:20] in page
    response = client.post(f"/models/{model['id']}/rerun/")
    assert response.status_code == 302
    rerun_id = int(response["Location"].rstrip("/").rsplit("/", 1)[1])
    rerun = wait_for_status(api, f"/api/models/{rerun_id}/", {"done", "error"})
    assert rerun["job"]["status"] == "done", rerun["job"]
    first = TrainedModel.objects.get(pk=model["id"])
    second = TrainedModel.objects.get(pk=rerun_id)
    assert (second.seed, second.learning_rate, second.dataset_id) == (1234, 0.02, dataset_id)
    curve = lambda m: list(m.metrics.filter(name="train_loss").order_by("iteration").values_list("value", flat=True))  # noqa: E731
    assert curve(first) == curve(second) and len(curve(first)) == 15  # the same curve, point for point
    assert rerun["snapshots"][-1]["val_accuracy"] == model["snapshots"][-1]["val_accuracy"]


def test_retention_keeps_the_last_snapshots_and_the_best(owner, settings):
    from models_app.models import Evaluation, Snapshot
    from models_app.services import model_apply_retention
    from tests.factories import make_dataset, make_model
    from workers.models import Job

    model = make_model(owner, make_dataset(owner), epochs=5)
    Snapshot.objects.filter(model=model, epoch=5).update(val_accuracy=0.95)
    Snapshot.objects.filter(model=model, epoch=2).update(val_accuracy=0.99)  # the best, early
    for s in Snapshot.objects.filter(model=model):
        s.path.write_bytes(b"x" * 1000)
    reading = Job.objects.create(kind="evaluation", name="busy", owner=owner, status="running")
    Evaluation.objects.create(job=reading, model=model, epoch=1, split="val")  # epoch 1 is being read
    settings.SNAPSHOT_KEEP_LAST = 0
    assert model_apply_retention(model.pk) == 0  # the site keeps every snapshot by default
    TrainedModel.objects.filter(pk=model.pk).update(keep_snapshots=2)
    assert model_apply_retention(model.pk) == 1000
    kept = sorted(Snapshot.objects.filter(model=model).values_list("epoch", flat=True))
    assert kept == [1, 2, 4, 5]  # the last two, the best, and the one an evaluation reads
    assert not (model.directory / "snapshot_epoch_3.pt").exists() and (model.directory / "snapshot_epoch_2.pt").exists()
    assert TrainedModel.objects.get(pk=model.pk).snapshots_freed_bytes == 1000
    Job.objects.filter(pk=reading.pk).update(status="done")
    settings.SNAPSHOT_KEEP_LAST = 1
    TrainedModel.objects.filter(pk=model.pk).update(keep_snapshots=None)  # the site's setting: the last one and the best
    assert model_apply_retention(model.pk) == 2000
    assert sorted(Snapshot.objects.filter(model=model).values_list("epoch", flat=True)) == [2, 5]
