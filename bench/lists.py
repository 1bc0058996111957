"""Lists at scale: the pages and endpoints that list jobs, with 10,000 models in Postgres.

    .venv/bin/python -m bench.lists [--models 10000] [--runs 5]

Creates a fresh database (`digits_bench_lists` on the DATABASE_URL server, default the
local Postgres), fills it with models (one dataset, two users, every fourth model with two
snapshots, some queued) and, per hundred models, a dataset of 1,000 classes, a sweep, and
an evaluation and an export of one model, then times each request through Django's test client, in this
process: the median and the spread of `--runs` requests, and the queries each makes. The
baseline, measured in the same run: the same request with 10 models.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SERVER = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test").rsplit("/", 1)[0]
os.environ.update(
    DJANGO_SETTINGS_MODULE="digits_site.settings",
    DATABASE_URL=f"{SERVER}/digits_bench_lists",
    DIGITS_DATA_DIR=os.environ.get("BENCH_DATA_DIR", "/tmp/digits-bench-lists"),
    REDIS_URL=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12"),
)

import psycopg  # noqa: E402


def recreate_database() -> None:
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS digits_bench_lists WITH (FORCE)")
        conn.execute("CREATE DATABASE digits_bench_lists")


recreate_database()

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from datasets.models import Dataset  # noqa: E402
from models_app.models import Evaluation, Export, Snapshot, Sweep, TrainedModel, Trial  # noqa: E402
from workers.models import Job, JobStatus  # noqa: E402

URLS = ["/api/models/", "/api/models/?page_size=500", "/api/jobs/?page_size=500", "/api/datasets/", "/models/",
        "/models/new/", "/cluster/", "/api/usage/", "/api/queue/", "/api/sweeps/?page_size=500", "/sweeps/",
        "/api/models/{scope}/evaluations/?page_size=500", "/api/models/{scope}/exports/?page_size=500"]


def fill(owner, other, dataset: Dataset, scope: TrainedModel, start: int, count: int) -> None:  # noqa: ANN001
    """`count` models on `dataset`; and for every hundred of them (at least one) a dataset
    of 1,000 classes, a sweep of two of them, an evaluation and an export of `scope`."""
    jobs = Job.objects.bulk_create(
        Job(kind="model", name=f"run-{i:05d}", owner=owner if i % 2 else other,
            status=JobStatus.QUEUED if i % 50 == 0 else JobStatus.DONE)
        for i in range(start, start + count)
    )
    models = TrainedModel.objects.bulk_create(TrainedModel(job=j, dataset=dataset) for j in jobs)
    Snapshot.objects.bulk_create(
        Snapshot(model_id=j.pk, epoch=e, iteration=e * 10, filename=f"s{e}.pt", val_accuracy=0.5)
        for j in jobs[::4] for e in (1, 2)
    )
    extra = max(1, count // 100)
    kinds = ("dataset",) * extra + ("evaluation",) * extra + ("export",) * extra
    more = Job.objects.bulk_create(
        Job(kind=kind, name=f"{kind}-{start}-{i}", owner=owner, status=JobStatus.DONE) for i, kind in enumerate(kinds)
    )
    Dataset.objects.bulk_create(
        Dataset(job=j, folder="/nowhere", labels=[f"class-{c}" for c in range(1000)], counts={"train": 8})
        for j in more[:extra]
    )
    Evaluation.objects.bulk_create(Evaluation(job=j, model=scope, epoch=2.0, metrics={"top1": 0.5}) for j in more[extra:2 * extra])
    Export.objects.bulk_create(Export(job=j, model=scope, epoch=2.0) for j in more[2 * extra:])
    for i in range(extra):
        sweep = Sweep.objects.create(owner=owner, name=f"sweep-{start}-{i}", dataset=dataset, space={"lr": {"values": [0.1, 0.01]}})
        Trial.objects.bulk_create(
            Trial(sweep=sweep, number=n, model=models[(2 * i + n) % len(models)], params={"lr": lr}, state="complete", value=0.5)
            for n, lr in enumerate((0.1, 0.01))
        )


def measure(client: Client, url: str, runs: int) -> tuple[list[float], int]:
    times, queries = [], 0
    for _ in range(runs):
        with CaptureQueriesContext(connection) as ctx:
            began = time.perf_counter()
            response = client.get(url)
            times.append(time.perf_counter() - began)
        assert response.status_code == 200, (url, response.status_code)
        queries = len(ctx.captured_queries)
    return times, queries


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    call_command("prepare")
    User = get_user_model()
    admin = User.objects.create_superuser("bench-admin", "", "bench-only")
    other = User.objects.create_user("bench-other", "", "bench-only")
    dataset_job = Job.objects.create(kind="dataset", name="bench", owner=admin, status=JobStatus.DONE)
    dataset = Dataset.objects.create(job=dataset_job, folder="/nowhere", labels=["a", "b"], counts={"train": 8, "val": 2})
    scope_job = Job.objects.create(kind="model", name="scope", owner=admin, status=JobStatus.DONE)
    scope = TrainedModel.objects.create(job=scope_job, dataset=dataset)
    urls = [url.format(scope=scope.pk) for url in URLS]
    client = Client()
    client.force_login(admin)
    fill(admin, other, dataset, scope, 0, 10)
    small = {url: measure(client, url, args.runs) for url in urls}
    fill(admin, other, dataset, scope, 10, args.models - 10)
    with connection.cursor() as cursor:  # as autovacuum would have by now: plans from real statistics
        cursor.execute("ANALYZE")
    print(f"{args.models} models in Postgres; {args.runs} requests each (baseline: the same request with 10 models)\n")
    print(f"{'request':46} {'median ms':>10} {'min-max ms':>14} {'queries':>8} {'10 models: ms':>14} {'queries':>8} {'ratio':>6}")
    for url in urls:
        times, queries = measure(client, url, args.runs)
        base_times, base_queries = small[url]
        median = statistics.median(times)
        print(f"{url:46} {median * 1000:>10.0f} {min(times) * 1000:>6.0f}-{max(times) * 1000:<7.0f} {queries:>8} "
              f"{statistics.median(base_times) * 1000:>14.0f} {base_queries:>8} {median / statistics.median(base_times):>6.1f}")
    connection.close()
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS digits_bench_lists WITH (FORCE)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
