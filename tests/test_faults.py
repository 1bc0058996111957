"""Faults the system must ride out, through the real stack: Redis restarted and Postgres
unreachable for 30 s while a model trains. (A killed web process: tests/test_browser.py;
a full disk while snapshotting: tests/test_training.py; a killed worker or host:
tests/test_distributed.py and tests/test_multihost.py.)"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import pytest
import requests
from django.conf import settings
from rest_framework.authtoken.models import Token

from models_app.models import Metric
from tests.conftest import Cluster, WebServer, free_port, wait_for_devices, wait_for_status
from tests.netproxy import TcpProxy
from tests.test_browser import _keep, _login, browser, page  # noqa: F401 - the browser fixtures
from tests.test_distributed import children_running, submit, wait_until
from tests.test_model_api import built_dataset
from workers.models import Allocation, Device, Job, JobEvent

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@contextmanager
def extra_workers(cluster: Cluster, host: str, count: int, env: dict[str, str]) -> Iterator[list[Device]]:
    """`count` CPU device workers of a host of their own (`host`: their device rows and
    queues are theirs alone), with `env` on top of the cluster's environment; stopped at
    the end."""
    names = [f"{host}{i}" for i in range(count)]
    try:
        for i, name in enumerate(names):
            cluster.start(name, device=f"cpu:{i}", extra_env={"DIGITS_HOST_NAME": host, **env})
        deadline = time.monotonic() + 30
        while Device.objects.filter(host=host).count() < count:
            assert time.monotonic() < deadline, f"the devices of {host} did not register"
            time.sleep(0.1)
        yield list(Device.objects.filter(host=host).order_by("index"))
    finally:
        for name in names:
            proc = cluster.procs.pop(name, None)
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)


def train_loss_iterations(model_id: int) -> list[int]:
    return sorted(Metric.objects.filter(model_id=model_id, name="train_loss").values_list("iteration", flat=True))


def test_postgres_unreachable_for_30_seconds_loses_no_job_and_runs_none_twice(celery_worker_process, api, shapes_folder):
    """Every worker loses the database for 30 s in the middle of a 2-rank DDP job: the
    ranks train on (their points kept in memory), nobody reaps anybody when it is back,
    and the job ends once, with every point stored exactly once. The job is longer than
    any machine trains in this test, and its owner ends it once the points kept through
    the outage are in: how long it trains does not decide what the test sees."""
    cluster = celery_worker_process
    dataset_id = built_dataset(api, shapes_folder)
    db = settings.DATABASES["default"]
    proxy = TcpProxy(("127.0.0.1", free_port()), (db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)))
    proxy.start()
    through_proxy = os.environ["DATABASE_URL"].rsplit("/", 1)[0].rsplit("@", 1)[0] + f"@127.0.0.1:{proxy.port}/{db['NAME']}"
    # The session's device workers reach the database directly: stopped for as long as
    # the others cannot reach it, they "lose" it too (and come back as stale as they would).
    session = [p for name, p in cluster.procs.items() if name.startswith("cpu") and p.poll() is None]
    try:
        with extra_workers(cluster, "dbcut", 2, {"DATABASE_URL": through_proxy}) as devices:
            model_id = submit(api, dataset_id, name="through-an-outage", epochs=10_000, snapshot_interval=1000,
                              val_interval=1000, devices=2, device_ids=[d.pk for d in devices])
            wait_until(lambda: len(train_loss_iterations(model_id)) > 30, 120, "training to start")
            ranks = children_running(model_id)
            assert len(ranks) == 2, ranks
            proxy.cut()
            for proc in session:
                os.killpg(proc.pid, signal.SIGSTOP)
            cut_at = time.monotonic()
            time.sleep(2)  # what was in flight has landed
            stored_during = len(train_loss_iterations(model_id))
            time.sleep(30 - (time.monotonic() - cut_at))
            # Nothing reached the database, and the ranks are the same processes, alive.
            assert len(train_loss_iterations(model_id)) == stored_during
            assert all(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks)
            assert Job.objects.get(pk=model_id).status == "running"
            proxy.restore()
            for proc in session:
                os.killpg(proc.pid, signal.SIGCONT)
            session = []
            # The points made meanwhile arrive at once (the ranks did not wait for the database).
            wait_until(lambda: len(train_loss_iterations(model_id)) > stored_during + 100, 30, "the kept points to be stored")
            assert Job.objects.get(pk=model_id).status == "running"
            assert api.post(f"/api/models/{model_id}/abort/").status_code == 200
            ended = wait_for_status(api, f"/api/models/{model_id}/", {"done", "error", "queued", "aborted"}, timeout=120)
            assert ended["job"]["status"] == "aborted", ended["job"]
            # The ranks stop their children and give their devices back after the status
            # changed: only then may their workers go.
            wait_until(lambda: not Allocation.objects.filter(job_id=model_id, released_at__isnull=True).exists(), 60,
                       "the ranks to give their devices back")
            logs = "".join(cluster.logs[f"dbcut{i}"].read_text() for i in range(2))
    finally:
        for proc in session:
            os.killpg(proc.pid, signal.SIGCONT)
        proxy.close()
    # Run once: one attempt, both ranks ended by the abort, one start on the timeline, no requeue.
    allocations = Allocation.objects.filter(job_id=model_id).order_by("rank")
    assert [(a.attempt, a.rank, a.outcome) for a in allocations] == [(1, 0, "aborted"), (1, 1, "aborted")]
    statuses = list(JobEvent.objects.filter(job_id=model_id).exclude(status="").values_list("status", flat=True))
    assert statuses.count("running") == 1 and "queued" not in statuses[statuses.index("running"):], statuses
    # Every point stored, once: from the first step to the last one trained, no gap, no duplicate.
    iterations = train_loss_iterations(model_id)
    assert len(iterations) > stored_during + 100 and iterations == list(range(1, len(iterations) + 1))
    assert "database unreachable" in logs and "database back" in logs
    wait_for_devices(Cluster.DEVICES)


class RedisServer:
    """A Redis server of this test's own, as a process manager runs it: no persistence,
    so a restart loses everything it held (queued messages, channel groups)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).stdout.strip() != b"PONG":
            assert self.proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def test_redis_restarted_mid_training_loses_no_point_and_the_chart_reconnects(celery_worker_process, api, owner, shapes_folder, page):  # noqa: F811
    """The Redis that carries a run's Celery messages, live events and websocket groups
    restarts (empty) while the run trains and its page is open: the run goes on, the
    open page follows it again by itself, and every point is stored once. The run is
    longer than any machine trains in this test: its owner ends it once the page follows
    it again, and the end reaches the page through the restarted Redis too."""
    cluster = celery_worker_process
    dataset_id = built_dataset(api, shapes_folder)
    redis_server = RedisServer()
    redis_server.start()
    web = WebServer({"REDIS_URL": redis_server.url})
    web.start()
    try:
        with extra_workers(cluster, "redisrestart", 1, {"REDIS_URL": redis_server.url}) as devices:
            # Submitted to the web server on that Redis, so its scheduler dispatches there.
            token = Token.objects.get_or_create(user=owner)[0].key
            body = {"name": "through-a-redis-restart", "dataset": dataset_id, "epochs": 10_000, "batch_size": 16, "seed": 3,
                    "snapshot_interval": 1000, "val_interval": 1000, "device_ids": [devices[0].pk]}
            auth = {"Authorization": f"Token {token}"}
            response = requests.post(f"{web.url}/api/models/", json=body, headers=auth, timeout=30)
            assert response.status_code == 201, response.text
            model_id = response.json()["id"]
            _login(page, web.url)
            page.goto(f"{web.url}/models/{model_id}/")
            page.wait_for_function("document.body.dataset.live === 'connected'", timeout=60_000)
            page.wait_for_function("Chart.getChart('loss-chart').data.datasets[0].data.length > 10", timeout=60_000)
            redis_server.stop()
            down = len(train_loss_iterations(model_id))
            wait_until(lambda: len(train_loss_iterations(model_id)) > down + 30, 60, "training to go on without Redis")
            redis_server.start()
            restarted = len(train_loss_iterations(model_id))
            # The page follows the run again (live, without a reload by hand): its chart
            # grows past what was stored when Redis came back.
            page.wait_for_function(
                f"Chart.getChart('loss-chart') && Chart.getChart('loss-chart').data.datasets[0].data.length > {restarted + 30}",
                timeout=60_000,
            )
            _keep(page, "after-redis-restart")
            assert requests.post(f"{web.url}/api/models/{model_id}/abort/", headers=auth, timeout=30).status_code == 200
            ended = wait_for_status(api, f"/api/models/{model_id}/", {"done", "error", "queued", "aborted"}, timeout=120)
            assert ended["job"]["status"] == "aborted", ended["job"]
            # The end is pushed to the page too (it reloads itself to show it).
            page.wait_for_function("document.getElementById('job').dataset.status === 'aborted'", timeout=30_000)
            wait_until(lambda: not Allocation.objects.filter(job_id=model_id, released_at__isnull=True).exists(), 60,
                       "the rank to give its device back")
            # The worker lost its broker under the running task, and took it up again.
            log = cluster.logs["redisrestart0"].read_text()
            assert "Connection to broker lost" in log and "live events pushed again" in log
    finally:
        web.stop()
        redis_server.stop()
    allocations = Allocation.objects.filter(job_id=model_id)
    assert [(a.attempt, a.outcome) for a in allocations] == [(1, "aborted")]
    # Every point stored once: from the first step to the last one trained, no gap, no duplicate.
    iterations = train_loss_iterations(model_id)
    assert len(iterations) > restarted + 30 and iterations == list(range(1, len(iterations) + 1))
