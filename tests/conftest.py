"""Shared fixtures: named users (owner, teammate, stranger, admin), token API clients, a
real Celery worker process on the test database, and generated image folders."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.imagegen import make_shapes_folder

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _clean_redis() -> None:
    """Start from an empty broker/channel database (the test settings use a dedicated one)."""
    redis.Redis.from_url(settings.REDIS_URL).flushdb()


@pytest.fixture(scope="session", autouse=True)
def _end_subprocess_connections(django_db_setup, django_db_blocker) -> Iterator[None]:
    """Workers and web servers started by tests may hold connections for a moment after
    they exit; end them so the test database can be dropped cleanly."""
    yield
    if settings.DATABASES["default"]["NAME"] == os.environ["DATABASE_URL"].rsplit("/", 1)[1].split("?")[0]:
        return  # only tests without the database ran: there is no test database
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


def subprocess_env(db_name: str) -> dict[str, str]:
    """Environment for subprocesses (workers, web server) that must use the test database."""
    url = os.environ["DATABASE_URL"].rsplit("/", 1)[0] + "/" + db_name
    # Not the browser tests' DJANGO_ALLOW_ASYNC_UNSAFE (set in this process for Playwright's
    # event loop): the web server and workers keep Django's check, as in production.
    inherited = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    return {
        **inherited,
        "DJANGO_SETTINGS_MODULE": "digits_site.settings_test",
        "DATABASE_URL": url,
        # One key for every process of the session (as `serve` writes it for `make run`):
        # sessions stay valid when a web server is restarted.
        "SECRET_KEY": settings.SECRET_KEY,
        "PYTHONUNBUFFERED": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }


class Cluster:
    """Real Celery workers on the test database and broker: one for dataset builds, one for
    inference requests and one pinned to each CPU device (DIGITS_DEVICE=cpu:N), as
    `manage.py serve` starts them.
    Tests may kill a device worker (kill -9) and start it again.
    `prefix` runs each worker through a command (e.g. `ip netns exec NAME ...`: a worker on
    another host); `log_dir` holds the workers' logs (default: the test data folder)."""

    DEVICES = 2

    def __init__(self, env: dict[str, str], *, prefix: list[str] | None = None, log_dir: Path | None = None) -> None:
        self.env = env
        self.prefix = prefix or []
        self.log_dir = log_dir or Path(settings.DATA_DIR)
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def start(self, name: str, *, device: str | None = None, queues: str | None = None, extra_env: dict[str, str] | None = None) -> None:
        log_path = self.log_dir / f"celery-{name}.log"
        env = {**self.env, **(extra_env or {})}
        cmd = [sys.executable, "-m", "celery", "-A", "digits_site", "worker", "--loglevel", "INFO",
               "-n", f"{name}@%h", "--without-mingle", "--without-gossip"]
        if device:
            env["DIGITS_DEVICE"] = device
            cmd += ["-c", "1"]
        elif queues == "inference":  # as `manage.py serve` starts it
            env["CUDA_VISIBLE_DEVICES"] = ""
            cmd += ["-P", "threads", "-c", "2", "-Q", queues]
        else:
            cmd += ["-c", "2", "-Q", queues or "datasets"]
        with log_path.open("a") as log:
            log.write(f"--- start {name}\n")
            offset = log.tell()
            self.procs[name] = subprocess.Popen(
                [*self.prefix, *cmd], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.logs[name] = log_path
        deadline = time.monotonic() + 60
        while "ready." not in log_path.read_text()[offset:]:
            if self.procs[name].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Celery worker {name} did not start:\n" + log_path.read_text()[-3000:])
            time.sleep(0.2)

    def start_devices(self) -> None:
        for index in range(self.DEVICES):
            name = f"cpu{index}"
            if name not in self.procs or self.procs[name].poll() is not None:
                self.start(name, device=f"cpu:{index}")

    def kill(self, name: str) -> None:
        """kill -9 the worker's main process only: its pool and the training child must
        die with it (PR_SET_PDEATHSIG), as they would with a real crash."""
        proc = self.procs[name]
        os.kill(proc.pid, 9)
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)


@pytest.fixture(scope="session")
def worker_cluster(django_db_setup, django_db_blocker) -> Iterator[Cluster]:
    cluster = Cluster(subprocess_env(settings.DATABASES["default"]["NAME"]))
    try:
        cluster.start("datasets")
        cluster.start("inference", queues="inference")
        cluster.start_devices()
        yield cluster
    finally:
        cluster.stop()


def wait_for_devices(count: int, timeout: float = 30) -> list:
    """The devices online (heartbeating), once there are `count` of them. A transactional
    test's flush deletes their rows; the workers register again on their next heartbeat."""
    from workers.scheduler import live_devices

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        devices = list(live_devices().filter(enabled=True))
        if len(devices) >= count:
            return devices
        time.sleep(0.1)
    raise AssertionError(f"only {len(devices)} of {count} devices came online in {timeout}s")


@pytest.fixture
def celery_worker_process(worker_cluster: Cluster, transactional_db) -> Cluster:
    """The running cluster, with every device worker up and its device online."""
    worker_cluster.start_devices()
    wait_for_devices(Cluster.DEVICES)
    return worker_cluster


def _user(django_user_model, name: str, **extra):
    return django_user_model.objects.create_user(name, f"{name}@example.com", "pw-" + name, **extra)


@pytest.fixture
def owner(django_user_model):
    return _user(django_user_model, "owner")


@pytest.fixture
def teammate(django_user_model):
    return _user(django_user_model, "teammate")


@pytest.fixture
def stranger(django_user_model):
    return _user(django_user_model, "stranger")


@pytest.fixture
def admin_user(django_user_model):
    return _user(django_user_model, "boss", is_staff=True, is_superuser=True)


def token_client(user) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def api(owner) -> APIClient:
    return token_client(owner)


@pytest.fixture
def data_root() -> Iterator[Path]:
    root = settings.DATA_ROOTS[0]
    root.mkdir(parents=True, exist_ok=True)
    yield root


@pytest.fixture
def shapes_folder(data_root: Path, request) -> Iterator[Path]:
    folder = data_root / f"shapes-{request.node.name}"
    make_shapes_folder(folder, per_class=100)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def wait_for_status(client: APIClient, url: str, statuses: set[str], timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = client.get(url).json()
        if data["job"]["status"] in statuses:
            return data
        time.sleep(0.3)
    raise AssertionError(f"{url} did not reach {statuses} in {timeout}s: {data['job']}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebServer:
    """The real ASGI server (daphne, websockets included) on the test database, on one
    port: tests may stop it and start it again (a restarted web process)."""

    def __init__(self, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.extra_env = extra_env or {}

    def start(self) -> None:
        env = {**subprocess_env(settings.DATABASES["default"]["NAME"]), **self.extra_env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "digits_site.asgi:application"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, "daphne did not start"
                time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it (SIGTERM: daphne waits for open websockets to close; after 5 s they are
        cut, as a process manager would)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def web_server(transactional_db) -> Iterator[WebServer]:
    server = WebServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def live_url(web_server: WebServer) -> str:
    return web_server.url


@pytest.fixture
def fake_devices(worker_cluster: Cluster) -> Iterator[None]:
    """Pause the real device workers (SIGSTOP) and remove their rows, so the passes run by
    these tests see only the devices they create."""
    from workers.models import Device

    paused = [p for name, p in worker_cluster.procs.items() if name.startswith("cpu") and p.poll() is None]
    for proc in paused:
        os.killpg(proc.pid, signal.SIGSTOP)
    Device.objects.all().delete()
    try:
        yield
    finally:
        Device.objects.all().delete()
        for proc in paused:
            os.killpg(proc.pid, signal.SIGCONT)
