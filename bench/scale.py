"""Pages and chart data at scale: 10,000 jobs of 20 users, 200 models with 50,000 metric
points each (10 M points), in Postgres.

    .venv/bin/python -m bench.scale [--runs 20] [--heavy 200] [--points 50000]

Creates a fresh database (`digits_bench_scale` on the DATABASE_URL server, default the
local Postgres); the points are written by the database itself (generate_series). Then
times each request through Django's test client in this process: p50 and p95 of `--runs`
requests, the response size and the queries it makes. The baseline, measured in the same
run before the fill: the same requests with 10 jobs (a model with 1,000 points).
Goal (issue 14): p95 < 150 ms each, no page over 300 KB.
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
DB = "digits_bench_scale"
os.environ.update(
    DJANGO_SETTINGS_MODULE="digits_site.settings",
    DATABASE_URL=f"{SERVER}/{DB}",
    DIGITS_DATA_DIR=os.environ.get("BENCH_DATA_DIR", "/tmp/digits-bench-scale"),
    REDIS_URL=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12"),
)

import psycopg  # noqa: E402


def recreate_database() -> None:
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB}")


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
from digits_site.asgi import freeze_loaded_code  # noqa: E402,F401 - as the web server starts: code loaded, then frozen

NETWORKS = ["lenet", "alexnet", "resnet18", "googlenet"]


def fill(users: list, jobs: int, heavy: int, points: int, start: int = 0) -> tuple[list[int], list[int]]:
    """`jobs` jobs (5 % datasets, the rest models), `heavy` of the models with `points`
    metric points each; the others with a few. Returns (model ids, heavy model ids)."""
    datasets_n = max(1, jobs // 20)
    dataset_jobs = Job.objects.bulk_create(
        Job(kind="dataset", name=f"data-{start + i:05d}", owner=users[i % len(users)], status=JobStatus.DONE, group=f"team-{i % 7}")
        for i in range(datasets_n)
    )
    datasets = Dataset.objects.bulk_create(
        Dataset(job=j, folder="/nowhere", labels=["a", "b", "c"], counts={"train": 900, "val": 100}) for j in dataset_jobs
    )
    model_jobs = Job.objects.bulk_create(
        Job(kind="model", name=f"run-{start + i:05d}", owner=users[i % len(users)], group=f"team-{i % 7}",
            notes="warm restarts" if i % 13 == 0 else "",
            status=JobStatus.QUEUED if i % 97 == 0 else JobStatus.RUNNING if i % 89 == 0 else JobStatus.DONE)
        for i in range(jobs - datasets_n)
    )
    models = TrainedModel.objects.bulk_create(
        TrainedModel(job=j, dataset=datasets[i % len(datasets)], network=NETWORKS[i % len(NETWORKS)], epochs=30,
                     best_val_accuracy=(i * 7919 % 1000) / 1000, best_epoch=(i % 30) + 1)
        for i, j in enumerate(model_jobs)
    )
    Snapshot.objects.bulk_create(
        Snapshot(model_id=m.pk, epoch=e, iteration=e * 100, filename=f"s{e}.pt", val_accuracy=m.best_val_accuracy)
        for m in models for e in (10, 20, 30)
    )
    ids = [m.pk for m in models]
    heavy_ids = ids[:: max(1, len(ids) // heavy)][:heavy]
    light_ids = [i for i in ids if i not in set(heavy_ids)]
    val = max(1, points // 100)  # validation points per series
    train = (points - 2 * val) // 2
    with connection.cursor() as cursor:
        for name, count, value in (
            ("train_loss", train, "2.0 / (1 + i / 1000.0) + 0.1 * sin(i / 7.0)"),
            ("lr", train, "0.01 * (1 + cos(pi() * i / %(n)s)) / 2"),
            ("val_loss", val, "1.5 / (1 + i / 10.0)"),
            ("val_accuracy", val, "0.5 + 0.4 * i / %(n)s"),
        ):
            step = max(1, train // count)
            expression = value % {"n": count}
            cursor.execute(
                f"INSERT INTO models_app_metric (model_id, name, iteration, epoch, value) "
                f"SELECT m, %s, i * {step}, i * {step} * 30.0 / {train}, {expression} "
                f"FROM unnest(%s::int[]) AS m, generate_series(1, {count}) AS i",
                [name, heavy_ids],
            )
            cursor.execute(
                f"INSERT INTO models_app_metric (model_id, name, iteration, epoch, value) "
                f"SELECT m, %s, i * {step * 100}, i * 3.0, {expression} FROM unnest(%s::int[]) AS m, generate_series(1, 10) AS i",
                [name, light_ids],
            )
        cursor.execute("ANALYZE")
    return ids, heavy_ids


def measure(client: Client, url: str, runs: int) -> tuple[list[float], int, int]:
    times, queries, size = [], 0, 0
    client.get(url)  # warm: templates compiled, connection open
    for _ in range(runs):
        with CaptureQueriesContext(connection) as ctx:
            began = time.perf_counter()
            response = client.get(url)
            body = b"".join(response.streaming_content) if response.streaming else response.content
            times.append(time.perf_counter() - began)
        assert response.status_code == 200, (url, response.status_code, body[:300])
        queries, size = len(ctx.captured_queries), len(body)
    return times, queries, size


def p95(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def urls(ids: list[int], heavy: list[int]) -> list[tuple[str, str]]:
    model = heavy[0]
    ten = ",".join(map(str, heavy[:10]))
    return [
        ("home page", "/"),
        ("models list: best first, filtered", "/models/?ordering=-best&status=done&network=lenet"),
        ("models list: search, page 3", "/models/?search=warm&ordering=-created&page=3"),
        ("datasets list", "/datasets/?ordering=name"),
        ("list API: best first", "/api/models/?ordering=-best&network=resnet18"),
        ("one model page", f"/models/{model}/"),
        ("its chart data", f"/api/models/{model}/metrics/"),
        ("compare page, 10 runs", f"/models/compare/?ids={ten}"),
        ("compare chart data, 1 of 10", f"/api/models/{heavy[1]}/metrics/?max_points=1000"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--heavy", type=int, default=200)
    parser.add_argument("--points", type=int, default=50_000)
    args = parser.parse_args()
    call_command("prepare")
    User = get_user_model()
    users = [User.objects.create_user(f"user{i:02d}", "", "bench-only") for i in range(19)]
    admin = User.objects.create_superuser("bench-admin", "", "bench-only")
    users.append(admin)
    client = Client()
    client.force_login(admin)

    small_ids, small_heavy = fill(users, 20, 10, 1000)
    baseline = {label: measure(client, url, args.runs) for label, url in urls(small_ids, small_heavy)}
    began = time.monotonic()
    ids, heavy = fill(users, args.jobs - 20, args.heavy, args.points, start=100)
    points = connection.cursor()
    points.execute("SELECT count(*) FROM models_app_metric")
    total = points.fetchone()[0]
    print(f"{Job.objects.count()} jobs of {len(users)} users; {len(heavy)} models with {args.points:,} points each; "
          f"{total:,} points in all (filled in {time.monotonic() - began:.0f} s). {args.runs} requests each.")
    print("baseline: the same request before the fill (20 jobs, 10 models with 1,000 points)\n")
    print(f"{'request':36} {'p50 ms':>7} {'p95 ms':>7} {'KB':>6} {'queries':>7} {'base p50':>9} {'p95/150ms':>10}")
    worst = 0.0
    largest = 0
    for label, url in urls(ids, heavy):
        times, queries, size = measure(client, url, args.runs)
        base = statistics.median(baseline[label][0])
        worst, largest = max(worst, p95(times)), max(largest, size)
        print(f"{label:36} {statistics.median(times) * 1000:>7.1f} {p95(times) * 1000:>7.1f} {size / 1024:>6.0f} {queries:>7} "
              f"{base * 1000:>9.1f} {p95(times) / 0.150:>10.2f}")
    print(f"\nworst p95 {worst * 1000:.0f} ms (goal < 150 ms); largest response {largest / 1024:.0f} KB (goal <= 300 KB)")
    connection.close()
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
