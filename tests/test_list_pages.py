"""The models and datasets lists: server-side pages, search, filters, sorting by any
column (best validation accuracy included), bulk actions checked job by job, and the
compare page."""
from __future__ import annotations

import pytest
from django.test import Client

from datasets.models import Dataset
from models_app.models import TrainedModel
from models_app.services import model_refresh_best
from tests.conftest import token_client
from tests.factories import make_dataset, make_model
from workers.models import Job

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def runs(owner, teammate):
    dataset = make_dataset(owner, name="shared")
    made = {}
    for name, epochs, network in (("alpha", 2, "lenet"), ("beta", 4, "lenet"), ("gamma", 1, "alexnet")):
        model = make_model(owner, dataset, name=name, epochs=epochs)
        TrainedModel.objects.filter(pk=model.pk).update(network=network)
        model_refresh_best(model.pk)
        made[name] = model
    made["fresh"] = make_model(owner, dataset, name="fresh", epochs=0)  # no validation yet
    made["theirs"] = make_model(teammate, make_dataset(teammate, name="theirs-ds"), name="theirs", epochs=3)
    model_refresh_best(made["theirs"].pk)
    Job.objects.filter(pk=made["beta"].pk).update(notes="the long run with warm restarts")
    return made


def names(html: str, table: str = "model-table") -> list[str]:
    """The first link of each row: the job's name."""
    body = html.split(f'id="{table}"', 1)[1].split("</table>", 1)[0]
    return [row.split('<td><a href="/', 1)[1].split(">", 1)[1].split("<", 1)[0] for row in body.split("<tr data-job")[1:]]


def test_sorting_searching_and_filtering(runs, owner):
    client = Client()
    client.force_login(owner)
    # Best validation accuracy (make_model: 0.5 + epoch / 10 at each epoch), the ones without last.
    html = client.get("/models/", {"ordering": "-best"}).content.decode()
    assert names(html) == ["beta", "theirs", "alpha", "gamma", "fresh"]
    assert "90.00%" in html and "(epoch 4)" in html
    html = client.get("/models/", {"ordering": "best"}).content.decode()
    assert names(html) == ["gamma", "alpha", "theirs", "beta", "fresh"]
    assert names(client.get("/models/", {"search": "warm restarts"}).content.decode()) == ["beta"]
    assert names(client.get("/models/", {"network": "alexnet"}).content.decode()) == ["gamma"]
    assert names(client.get("/models/", {"owner": "teammate"}).content.decode()) == ["theirs"]
    assert names(client.get("/models/", {"ordering": "-owner"}).content.decode())[0] == "theirs"  # teammate > owner
    assert names(client.get("/models/", {"ordering": "-dataset"}).content.decode())[0] == "theirs"  # theirs-ds > shared
    assert len(names(client.get("/models/", {"ordering": "-duration"}).content.decode())) == 5
    api = token_client(owner)
    rows = api.get("/api/models/", {"ordering": "-best", "page_size": 2}).json()
    assert [r["job"]["name"] for r in rows["results"]] == ["beta", "theirs"] and rows["count"] == 5
    assert rows["results"][0]["best_val_accuracy"] == pytest.approx(0.9) and rows["results"][0]["best_epoch"] == 4
    datasets = client.get("/datasets/", {"search": "theirs"}).content.decode()
    assert names(datasets, "dataset-table") == ["theirs-ds"]


def test_pages_of_fifty(owner):
    dataset = make_dataset(owner)
    for i in range(55):
        Job.objects.create(kind="model", name=f"m{i:02d}", owner=owner)
    TrainedModel.objects.bulk_create([TrainedModel(job=j, dataset=dataset) for j in Job.objects.filter(kind="model")])
    client = Client()
    client.force_login(owner)
    first = client.get("/models/", {"ordering": "name"}).content.decode()
    second = client.get("/models/", {"ordering": "name", "page": 2}).content.decode()
    assert len(names(first)) == 50 and names(second) == ["m50", "m51", "m52", "m53", "m54"]
    assert "55 in all" in first and "page=2" in first


def test_bulk_actions_check_each_job(runs, owner):
    client = Client()
    client.force_login(owner)
    ids = [runs["alpha"].pk, runs["theirs"].pk]
    response = client.post("/jobs/bulk/", {"ids": ids, "action": "group", "group": "sweep-1", "next": "/models/"}, follow=True)
    text = response.content.decode()
    assert "1 moved." in text and f"#{runs['theirs'].pk} skipped: not yours" in text
    assert Job.objects.get(pk=runs["alpha"].pk).group == "sweep-1" and Job.objects.get(pk=runs["theirs"].pk).group == ""
    api = token_client(owner)
    result = api.post("/api/jobs/bulk/", {"ids": [runs["alpha"].pk, runs["fresh"].pk], "action": "abort"}, format="json").json()
    assert result["done"] == [] and all("nothing to abort" in s["reason"] for s in result["skipped"])
    # A dataset in use is not deleted; its models are, with it afterwards.
    shared = runs["alpha"].dataset_id
    result = api.post("/api/jobs/bulk/", {"ids": [shared], "action": "delete"}, format="json").json()
    assert result["done"] == [] and "used by model(s)" in result["skipped"][0]["reason"]
    mine = [runs[n].pk for n in ("alpha", "beta", "gamma", "fresh")]
    result = api.post("/api/jobs/bulk/", {"ids": [*mine, shared], "action": "delete"}, format="json").json()
    assert result == {"done": [*mine, shared], "skipped": []}
    assert not Dataset.objects.filter(pk=shared).exists() and TrainedModel.objects.count() == 1
    assert api.post("/api/jobs/bulk/", {"ids": [], "action": "delete"}, format="json").status_code == 400


def test_compare_two_runs(runs, owner):
    client = Client()
    client.force_login(owner)
    ids = f"{runs['alpha'].pk},{runs['gamma'].pk}"
    html = client.get("/models/compare/", {"ids": ids}).content.decode()
    assert 'data-field="network" ' not in html  # the attribute, then its class
    row = html.split('data-field="network"', 1)[0].rsplit("<tr", 1)[1]
    assert 'class="differs"' in row
    row = html.split('data-field="dataset"', 1)[0].rsplit("<tr", 1)[1]
    assert 'class=""' in row  # the same dataset
    data = token_client(owner).get("/api/models/compare/", {"ids": ids}).json()
    assert [r["name"] for r in data["runs"]] == ["alpha", "gamma"]
    assert data["runs"][0]["best_val_accuracy"] == pytest.approx(0.7) and data["runs"][0]["best_epoch"] == 2
    differing = {p["field"] for p in data["params"] if p["differs"]}
    assert {"network", "epochs"} <= differing and "dataset" not in differing
    assert token_client(owner).get("/api/models/compare/", {"ids": str(runs["alpha"].pk)}).status_code == 400
    assert client.get("/models/compare/", {"ids": "1"}).status_code == 302


def test_sweeps_page_goes_a_page_at_a_time_in_constant_queries(owner):
    """The sweeps page: fifty a page, newest first, with their trials read in one query
    whatever their number (it had a silent cap of 200 and a query per sweep)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from models_app.models import Sweep, Trial

    dataset = make_dataset(owner)
    client = Client()
    client.force_login(owner)

    def add(numbers: range) -> None:
        for i in numbers:
            sweep = Sweep.objects.create(owner=owner, name=f"sweep-{i:02d}", dataset=dataset, space={"lr": {"values": [1, 2]}})
            Trial.objects.bulk_create([Trial(sweep=sweep, number=n, params={"lr": n}, state="complete", value=n) for n in (1, 2)])

    def page(number: int) -> tuple[str, int]:
        with CaptureQueriesContext(connection) as ctx:
            html = client.get("/sweeps/", {"page": number}).content.decode()
        rows = html.split('id="sweep-table"', 1)[1].split("</table>", 1)[0]
        return rows, len(ctx.captured_queries)

    add(range(5))
    _, few = page(1)
    add(range(5, 55))
    first, many = page(1)
    second, _ = page(2)
    assert first.count("/sweeps/") == 50 and "sweep-54" in first and "sweep-04" not in first
    assert second.count("/sweeps/") == 5 and "sweep-04" in second and "sweep-00" in second
    assert "2 / 16" in second  # its trials, read from the prefetch
    assert many == few, f"{few} queries for 5 sweeps, {many} for 50"
    assert "55 in all" in client.get("/sweeps/").content.decode()


def test_short_lists_say_what_they_leave_out_and_lead_to_the_rest(owner, monkeypatch):
    """No silent caps: a dataset's page shows its newest models and links to all of them
    in the models list; a model's page says how many evaluations there are; the models
    list's dataset filter and the evaluation compare form offer the newest and the one
    asked for, and say how many older ones there are."""
    import models_app.evaluation_views
    import models_app.views
    from models_app.models import Evaluation, Export

    client = Client()
    client.force_login(owner)
    datasets = [make_dataset(owner, name=f"data-{i}") for i in range(4)]
    oldest = datasets[0]
    models = [make_model(owner, oldest, name=f"on-oldest-{i:02d}") for i in range(22)]
    make_model(owner, datasets[1], name="elsewhere")

    page = client.get(f"/datasets/{oldest.pk}/").content.decode()
    assert "Models on this dataset (22)" in page and page.count('<li><a href="/models/') == 20
    assert f'href="/models/?dataset={oldest.pk}">All 22 in the models list' in page
    listed = client.get("/models/", {"dataset": oldest.pk}).content.decode()
    assert "22 in all" in listed and "elsewhere" not in listed

    monkeypatch.setattr(models_app.views, "DATASET_CHOICES", 2)
    listed = client.get("/models/", {"dataset": oldest.pk}).content.decode()
    offered = listed.split('aria-label="dataset"', 1)[1].split("</select>", 1)[0]
    assert "data-3" in offered and "data-2" in offered and "data-1" not in offered
    assert f'<option value="{oldest.pk}" selected>data-0</option>' in offered
    assert "1 more" in offered  # data-1: data-0 is offered, being the one asked for

    scope = models[0]
    evaluations = []
    for i in range(21):
        job = Job.objects.create(kind="evaluation", name=f"eval-{i:02d}", owner=owner, status="done")
        evaluations.append(Evaluation.objects.create(job=job, model=scope, epoch=1.0, split="val", metrics={"top1": 0.5}))
    for i in range(11):
        job = Job.objects.create(kind="export", name=f"export-{i:02d}", owner=owner, status="done")
        Export.objects.create(job=job, model=scope, epoch=1.0)
    page = client.get(f"/models/{scope.pk}/").content.decode()
    assert "The 20 newest of 21" in page and f"/api/models/{scope.pk}/evaluations/" in page
    assert page.count('class="export"') == 10 and "The 10 newest of 11 exports" in page

    monkeypatch.setattr(models_app.evaluation_views, "COMPARE_CHOICES", 3)
    first = evaluations[0]
    form = client.get("/evaluations/compare/", {"a": first.pk}).content.decode()
    side_a = form.split('name="a"', 1)[1].split("</select>", 1)[0]
    assert f'<option value="{first.pk}" selected>' in side_a and side_a.count("<option") == 4
    assert "4 finished evaluations are offered" in form and "17 more" in form
