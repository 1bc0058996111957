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


def make_rows(owner, teammate, count: int, scope=None, every_kind: bool = False) -> None:
    """`count` models and datasets, half of them the teammate's; with `every_kind`, as many
    rows of everything else a list shows (devices, a third of them busy, sweeps with their
    trials, audit entries, S3 credentials) and, with `scope` (a model), its evaluations
    and exports."""
    from datasets.models import S3Credential
    from models_app.models import Evaluation, Export, Sweep, Trial
    from workers.models import AuditEntry

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
        if not every_kind:
            continue
        other = Device.objects.create(
            uuid=f"cpu-lists-{count}-{i}", host=f"h{i}", address="127.0.0.1", kind="cpu", index=0, name="cpu",
        )
        if i % 3 == 0:  # a queued run pinned to a device: the board lists it under that device
            model.job.requested_devices.add(other)
        if i % 3 == 2:  # a device busy with a running job: the board names it
            running = make_model(user, dataset, name=f"busy-{count}-{i}", status="running", epochs=1)
            Allocation.objects.create(
                job_id=running.pk, job_name=running.job.name, owner=user, device=other, attempt=0, rank=0, world_size=1,
            )
        sweep = Sweep.objects.create(owner=user, name=f"sweep-{count}-{i}", dataset=dataset, space={"lr": {"values": [0.1, 0.01]}})
        Trial.objects.create(sweep=sweep, number=0, params={"lr": 0.1}, state="complete", value=0.5, best_epoch=1, model=model)
        Trial.objects.create(sweep=sweep, number=1, params={"lr": 0.01})
        AuditEntry.objects.create(user=user, username=user.username, action="delete", target=f"model {i}", method="DELETE", path="/", status=204)
        S3Credential.objects.create(owner=owner, name=f"s3-{count}-{i}", access_key_id="key", secret_encrypted=b"x")
        if scope is not None:
            for kind, row in (("evaluation", Evaluation), ("export", Export)):
                job = Job.objects.create(kind=kind, name=f"{kind}-{count}-{i}", owner=user, status="done", attempt=i % 2)
                row.objects.create(job=job, model=scope, epoch=1.0)
                if job.attempt:  # it ran on a device: its row names it
                    Allocation.objects.create(
                        job_id=job.pk, job_name=job.name, owner=user, device=other, attempt=1, rank=0, world_size=1,
                        released_at="2026-01-01T00:00:00Z",
                    )


def queries_for(api, url: str) -> tuple[int, dict]:
    with CaptureQueriesContext(connection) as ctx:
        response = api.get(url)
    assert response.status_code == 200, response.content
    return len(ctx.captured_queries), response.json()


# Every list endpoint whose rows are in the database (a dataset's images and an
# evaluation's images are read from files, a page at a time), and the rows it has at
# least after make_rows(10) and make_rows(90): the queue holds every third run.
LISTS = {
    "/api/models/": 100, "/api/datasets/": 100, "/api/jobs/": 100, "/api/sweeps/": 100, "/api/devices/": 100,
    "/api/queue/": 34, "/api/audit/": 100, "/api/s3/credentials/": 100,
    "/api/models/{scope}/evaluations/": 100, "/api/models/{scope}/exports/": 100,
}


@pytest.mark.parametrize("url", LISTS)
def test_queries_per_list_do_not_grow_with_rows(owner, teammate, admin_user, url) -> None:
    # The owner sees their team's rows; the audit log is for admins.
    api = token_client(admin_user if url.startswith("/api/audit/") else owner)
    scope = make_model(owner, make_dataset(owner, name="scope-data"), name="scope")
    address = url.format(scope=scope.pk) + "?page_size=500"
    make_rows(owner, teammate, 10, scope, every_kind=True)
    few, body = queries_for(api, address)
    assert body["count"] >= LISTS[url] // 10, body
    make_rows(owner, teammate, 90, scope, every_kind=True)
    many, body = queries_for(api, address)
    assert body["count"] >= LISTS[url] and len(body["results"]) == body["count"], body["count"]
    if "{scope}" in url:  # the jobs that ran name their device (prefetched allocations)
        assert sum(1 for row in body["results"] if row["job"]["devices"]) == 50
    assert many == few, f"{address}: {few} queries for the first rows, {many} for ten times as many"


def test_the_device_board_lists_every_job_queued_for_each_device(owner, teammate) -> None:
    # Behind a long queue of jobs that may run anywhere (the board once read only the first 500).
    Job.objects.bulk_create([Job(kind="model", name=f"anywhere-{i}", owner=owner, status="queued") for i in range(600)])
    make_rows(owner, teammate, 12, every_kind=True)
    devices = {d["uuid"]: d for d in token_client(owner).get("/api/devices/?page_size=500").json()["results"]}
    pinned = {d: [j.pk for j in Job.objects.filter(requested_devices__uuid=d)] for d in devices}
    assert sum(map(len, pinned.values())) == 4  # runs 0, 3, 6 and 9
    for uuid, device in devices.items():
        assert device["queued_for_it"] == pinned[uuid], uuid


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
