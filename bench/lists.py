"""Lists at scale: the pages and endpoints that list jobs, with 10,000 models in Postgres.

    .venv/bin/python -m bench.lists [--models 10000] [--runs 5]

Creates a fresh database (`digits_bench_lists` on the DATABASE_URL server, default the
local Postgres), fills it with models (one dataset, two users, every fourth model with two
snapshots, some queued), then times each request through Django's test client, in this
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
from models_app.models import Snapshot, TrainedModel  # noqa: E402
from workers.models import Job, JobStatus  # noqa: E402

URLS = ["/api/models/", "/api/models/?page_size=500", "/api/jobs/?page_size=500", "/api/datasets/", "/models/new/",
        "/cluster/", "/api/usage/", "/api/queue/"]


def fill(owner, other, dataset: Dataset, start: int, count: int) -> None:  # noqa: ANN001
    jobs = Job.objects.bulk_create(
        Job(kind="model", name=f"run-{i:05d}", owner=owner if i % 2 else other,
            status=JobStatus.QUEUED if i % 50 == 0 else JobStatus.DONE)
        for i in range(start, start + count)
    )
    TrainedModel.objects.bulk_create(TrainedModel(job=j, dataset=dataset) for j in jobs)
    Snapshot.objects.bulk_create(
        Snapshot(model_id=j.pk, epoch=e, iteration=e * 10, filename=f"s{e}.pt", val_accuracy=0.5)
        for j in jobs[::4] for e in (1, 2)
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
    client = Client()
    client.force_login(admin)
    fill(admin, other, dataset, 0, 10)
    small = {url: measure(client, url, args.runs) for url in URLS}
    fill(admin, other, dataset, 10, args.models - 10)
    print(f"{args.models} models in Postgres; {args.runs} requests each (baseline: the same request with 10 models)\n")
    print(f"{'request':32} {'median ms':>10} {'min-max ms':>14} {'queries':>8} {'10 models: ms':>14} {'queries':>8} {'ratio':>6}")
    for url in URLS:
        times, queries = measure(client, url, args.runs)
        base_times, base_queries = small[url]
        median = statistics.median(times)
        print(f"{url:32} {median * 1000:>10.0f} {min(times) * 1000:>6.0f}-{max(times) * 1000:<7.0f} {queries:>8} "
              f"{statistics.median(base_times) * 1000:>14.0f} {base_queries:>8} {median / statistics.median(base_times):>6.1f}")
    connection.close()
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS digits_bench_lists WITH (FORCE)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
