"""Metrics at scale: long series come downsampled (min/max per bucket, the last point and
every validation point exact) to pages and charts; full resolution pages through the API
and a CSV."""
from __future__ import annotations

import csv
import io
import math

import pytest
from django.test import Client

from models_app.models import Metric
from models_app.selectors import model_metrics
from tests.conftest import token_client
from tests.factories import make_dataset, make_model

pytestmark = [pytest.mark.django_db]

POINTS = 10_000
SPIKE = 4321


@pytest.fixture
def long_model(owner):
    model = make_model(owner, make_dataset(owner), epochs=0)
    Metric.objects.filter(model=model).delete()
    rows = [Metric(model=model, name="train_loss", iteration=i, epoch=i / 100, value=2 + math.sin(i / 50) + (50 if i == SPIKE else 0))
            for i in range(1, POINTS + 1)]
    rows += [Metric(model=model, name="val_accuracy", iteration=i * 500, epoch=i * 5, value=i / 20) for i in range(1, 21)]
    Metric.objects.bulk_create(rows, batch_size=5000)
    return model


def test_long_series_are_downsampled_keeping_extremes_and_the_last_point(long_model):
    series = model_metrics(long_model, max_points=200)
    loss = series["train_loss"]
    assert 100 <= len(loss) <= 201
    iterations = [p["iteration"] for p in loss]
    assert iterations == sorted(iterations)
    spike = max(loss, key=lambda p: p["value"])
    assert spike["value"] > 50 and abs(spike["iteration"] - SPIKE) <= POINTS // 100  # a spike survives, in its bucket
    assert loss[-1]["iteration"] == POINTS  # the newest point is always there
    values = [p["value"] for p in loss]
    everything = list(Metric.objects.filter(model=long_model, name="train_loss").values_list("value", flat=True))
    assert max(values) == pytest.approx(max(everything), rel=1e-6) and min(values) == pytest.approx(min(everything), rel=1e-6)
    assert len(series["val_accuracy"]) == 20  # validation points: every one
    assert len(model_metrics(long_model, max_points=None)["train_loss"]) == POINTS
    # After an iteration: only newer points, under the same bound.
    recent = model_metrics(long_model, after_iteration=POINTS - 50, max_points=200)["train_loss"]
    assert [p["iteration"] for p in recent] == list(range(POINTS - 49, POINTS + 1))


def test_full_resolution_pages_and_csv(long_model, owner):
    api = token_client(owner)
    charted = api.get(f"/api/models/{long_model.pk}/metrics/", {"max_points": 500}).json()
    assert len(charted["train_loss"]) <= 501
    assert len(api.get(f"/api/models/{long_model.pk}/metrics/").json()["train_loss"]) <= 2001
    got, after, pages = [], None, 0
    while True:
        params = {"name": "train_loss", "limit": 3000, **({"after": after} if after is not None else {})}
        page = api.get(f"/api/models/{long_model.pk}/metrics/points/", params).json()
        got += page["points"]
        pages += 1
        after = page["next_after"]
        if after is None:
            break
    assert pages == 4 and [p[0] for p in got] == list(range(1, POINTS + 1))
    assert api.get(f"/api/models/{long_model.pk}/metrics/points/").status_code == 400
    response = api.get(f"/api/models/{long_model.pk}/metrics/csv/")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0] == ["name", "iteration", "epoch", "value"] and len(rows) == POINTS + 20 + 1
    assert float(rows[1 + SPIKE - 1][3]) > 50  # train_loss rows first, in order; the spike exact

    # The page embeds no series: its charts fetch the downsampled ones.
    client = Client()
    client.force_login(owner)
    html = client.get(f"/models/{long_model.pk}/").content
    assert b'"iteration"' not in html and len(html) < 100_000
