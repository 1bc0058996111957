"""Every list endpoint is paginated, filterable and ordered, and a list request makes the
same number of queries for 10 rows as for 100."""
from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.conftest import token_client
from tests.factories import make_dataset, make_model
from workers.models import Allocation, Device, Job

pytestmark = pytest.mark.django_db


def make_rows(owner, teammate, count: int) -> None:
    device = Device.objects.create(uuid=f"cpu-lists-{count}", host="h", address="127.0.0.1", kind="cpu", index=0, name="cpu")
    dataset = make_dataset(owner, name=f"base-{count}")
    for i in range(count):
        user = owner if i % 2 else teammate
        model = make_model(user, dataset, name=f"run-{i:03d}", status="queued" if i % 3 == 0 else "done", epochs=1)
        if i % 3 == 1:  # a finished run keeps its allocation history: "devices" reads it
            Job.objects.filter(pk=model.pk).update(attempt=1)
            Allocation.objects.create(
                job_id=model.pk, job_name=model.job.name, owner=user, device=device, attempt=1, rank=0, world_size=1,
                released_at="2026-01-01T00:00:00Z",
            )
        make_dataset(user, name=f"ds-{i:03d}")


def queries_for(api, url: str) -> tuple[int, dict]:
    with CaptureQueriesContext(connection) as ctx:
        response = api.get(url)
    assert response.status_code == 200, response.content
    return len(ctx.captured_queries), response.json()


@pytest.mark.parametrize("url", ["/api/models/?page_size=500", "/api/datasets/?page_size=500", "/api/jobs/?page_size=500"])
def test_queries_per_list_do_not_grow_with_rows(owner, teammate, url) -> None:
    api = token_client(owner)
    make_rows(owner, teammate, 10)
    few, body = queries_for(api, url)
    assert body["count"] >= 10
    make_rows(owner, teammate, 90)
    many, body = queries_for(api, url)
    assert body["count"] >= 100 and len(body["results"]) >= 100
    assert many == few, f"{url}: {few} queries for the first rows, {many} for ten times as many"


def test_pagination_filters_and_ordering(owner, teammate) -> None:
    api = token_client(owner)
    make_rows(owner, teammate, 12)
    first = api.get("/api/models/?page_size=5").json()
    assert first["count"] == 12 and len(first["results"]) == 5 and first["next"] and first["previous"] is None
    rest = api.get(first["next"]).json()
    assert len(rest["results"]) == 5 and not {m["id"] for m in rest["results"]} & {m["id"] for m in first["results"]}
    mine = api.get("/api/models/?owner=owner&page_size=50").json()
    assert mine["count"] == 6 and all(m["job"]["owner"] == "owner" for m in mine["results"])
    queued = api.get("/api/models/?status=queued&page_size=50").json()
    assert queued["count"] == 4 and all(m["job"]["status"] == "queued" for m in queued["results"])
    named = api.get("/api/models/?search=RUN-01&ordering=name").json()
    assert [m["job"]["name"] for m in named["results"]] == ["run-010", "run-011"]
    by_name = api.get("/api/datasets/?ordering=-name&page_size=3").json()
    assert [d["job"]["name"] for d in by_name["results"]] == ["ds-011", "ds-010", "ds-009"]
    assert api.get("/api/jobs/?kind=dataset").json()["count"] == 13
    assert api.get("/api/models/?has_snapshots=true").json()["count"] == 12
    # The default is newest first; a page past the end is a 404 with the usual body.
    newest = api.get("/api/models/?page_size=1").json()["results"][0]["job"]["name"]
    assert newest == "run-011"
    past = api.get("/api/models/?page=99")
    assert past.status_code == 404 and "detail" in past.json()
