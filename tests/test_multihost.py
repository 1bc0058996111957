"""Several hosts, for real: two hosts are network namespaces joined to this one (the
"database host": Postgres, Redis, the test, the session's workers) by a bridge and a veth
pair each, with a host name of their own. Each runs its own device workers with its own
data folder; the job folders are shared (as the NFS mount README asks for), and Postgres
and Redis, which listen on 127.0.0.1 only, are reached through TCP proxies on the bridge.

A 2-rank DDP job (gloo) spans both hosts; every process of one host is killed mid-job,
and the job resumes from its last snapshot on the other host, losing and repeating no
step. Also: the proxy's cut and restore, which other tests use to take a service away."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil
import pytest
from django.conf import settings
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from models_app.models import Metric
from tests.conftest import Cluster, subprocess_env, token_client, wait_for_status
from tests.netproxy import TcpProxy
from tests.test_distributed import submit, wait_until
from tests.test_model_api import built_dataset
from workers import zygote
from workers.models import Allocation, Device, JobEvent
from workers.scheduler import live_devices

ITERATIONS_PER_EPOCH = 15  # the shapes folder: 240 training images, batch 16
EPOCHS = 40


# -- the network: a bridge on this host, and a namespace per other host -------------------
#
# Kernel names and the subnet carry this session's pid, so two test sessions on one
# machine never share (or tear down) each other's; a session that died without cleaning
# up is recognised by its dead pid and its leftovers removed.

HOST_NAMES = ("hosta", "hostb")
INNER_LINK = "dgnet0"  # the veth end inside each namespace (names there are private)
STALE = re.compile(r"^dg(?:br|v)?(\d+)")


def ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def namespace_pids(namespace: str) -> list[int]:
    """Every process in the namespace (nothing for one that does not exist)."""
    return [int(pid) for pid in ip("netns", "pids", namespace, check=False).split()]


def kill_namespace(namespace: str, timeout: float = 10) -> None:
    """kill -9 every process of the namespace, until none is left (a process forking while
    we kill is caught on the next round)."""
    deadline = time.monotonic() + timeout
    while pids := namespace_pids(namespace):
        assert time.monotonic() < deadline, f"processes of {namespace} survive kill -9: {pids}"
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


@dataclass
class Network:
    tag: str  # this session's pid
    subnet: str  # "10.213.X"

    @property
    def bridge(self) -> str:
        return f"dgbr{self.tag}"

    @property
    def bridge_address(self) -> str:
        return f"{self.subnet}.1"

    def namespace(self, host: str) -> str:
        return f"dg{self.tag}-{host}"

    def outer_link(self, host: str) -> str:
        return f"dgv{self.tag}{host[-1]}"  # at most 15 characters

    def address(self, host: str) -> str:
        return f"{self.subnet}.{2 + HOST_NAMES.index(host)}"

    def up(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.bridge_address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for host in HOST_NAMES:
            namespace = self.namespace(host)
            ip("netns", "add", namespace)
            ip("link", "add", self.outer_link(host), "type", "veth", "peer", "name", INNER_LINK, "netns", namespace)
            ip("link", "set", self.outer_link(host), "master", self.bridge, "up")
            ip("-n", namespace, "addr", "add", f"{self.address(host)}/24", "dev", INNER_LINK)
            ip("-n", namespace, "link", "set", "lo", "up")
            ip("-n", namespace, "link", "set", INNER_LINK, "up")

    def down(self) -> None:
        """Remove everything `up` made (or what of it exists), processes inside included."""
        for host in HOST_NAMES:
            kill_namespace(self.namespace(host))
            ip("link", "del", self.outer_link(host), check=False)  # and its peer, at once
            ip("netns", "del", self.namespace(host), check=False)
        ip("link", "del", self.bridge, check=False)

    @classmethod
    def remove_stale(cls) -> None:
        """Leftovers of test sessions that died without cleaning up."""
        names = [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]
        names += [line.split(":")[1].strip().split("@")[0] for line in ip("-o", "link").splitlines()]
        tags = {m.group(1) for name in names if (m := STALE.match(name))}
        for tag in tags:
            if not psutil.pid_exists(int(tag)):
                cls(tag, "").down()

    @classmethod
    def create(cls) -> Network:
        cls.remove_stale()
        used = ip("-o", "-4", "addr") + ip("-4", "route")
        third = next(n for n in range(47, 255) if f"10.213.{n}." not in used)
        network = cls(str(os.getpid()), f"10.213.{third}")
        try:
            network.up()
        except BaseException:
            network.down()
            raise
        return network


@pytest.fixture
def network() -> Iterator[Network]:
    net = Network.create()
    try:
        yield net
    finally:
        net.down()


# -- the hosts ----------------------------------------------------------------------------


def moved(url: str, host: str, port: int) -> str:
    """The same URL (user, database, options) on another host and port."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}:{port}" if user else f"{host}:{port}"))


@dataclass
class Host:
    name: str
    address: str
    namespace: str
    data_dir: Path  # its own; the job folders are the shared DIGITS_JOBS_DIR
    workers: Cluster

    def kill(self) -> None:
        """Every process of the host, at once (kill -9): a host that lost its power."""
        kill_namespace(self.namespace)
        for proc in self.workers.procs.values():
            proc.wait(10)

    def log_tails(self) -> str:
        return "\n".join(f"--- {path}\n{path.read_text()[-3000:]}" for path in self.workers.logs.values() if path.exists())


@pytest.fixture
def hosts(network: Network, celery_worker_process: Cluster, tmp_path: Path) -> Iterator[dict[str, Host]]:
    """hosta (devices cpu:0 and cpu:1) and hostb (cpu:0), each a namespace with its own host
    name, address and data folder, on the test database and broker through proxies. The
    session's own devices are drained meanwhile, so that jobs go to these hosts only."""
    database = settings.DATABASES["default"]
    redis_url = urlsplit(settings.REDIS_URL)
    postgres = TcpProxy((network.bridge_address, 0), (database["HOST"] or "127.0.0.1", int(database["PORT"] or 5432)))
    redis = TcpProxy((network.bridge_address, 0), (redis_url.hostname or "127.0.0.1", redis_url.port or 6379))
    session_devices = list(Device.objects.values_list("pk", flat=True))
    Device.objects.filter(pk__in=session_devices).update(enabled=False)
    started: dict[str, Host] = {}
    try:
        postgres.start()
        redis.start()
        base = subprocess_env(database["NAME"])
        for name in HOST_NAMES:
            data_dir = tmp_path / name
            data_dir.mkdir()
            env = {
                **base,
                "DATABASE_URL": moved(base["DATABASE_URL"], network.bridge_address, postgres.port),
                "REDIS_URL": moved(settings.REDIS_URL, network.bridge_address, redis.port),
                "DIGITS_HOST_NAME": name,
                "DIGITS_HOST_ADDRESS": network.address(name),
                "DIGITS_DATA_DIR": str(data_dir),
                "DIGITS_JOBS_DIR": str(settings.JOBS_DIR),  # the shared file system
            }
            # Its own network, and its own host name (what Celery names its workers after).
            prefix = ["ip", "netns", "exec", network.namespace(name), "unshare", "--uts",
                      "sh", "-c", 'hostname "$0" && exec "$@"', name]
            started[name] = Host(name, network.address(name), network.namespace(name), data_dir,
                                 Cluster(env, prefix=prefix, log_dir=data_dir))
        started["hosta"].workers.start("cpu0", device="cpu:0")
        started["hosta"].workers.start("cpu1", device="cpu:1")
        started["hostb"].workers.start("cpu0", device="cpu:0")
        wait_until(lambda: live_devices().filter(host__in=HOST_NAMES, enabled=True).count() == 3, 30, "the hosts' devices")
        yield started
    finally:
        for host in started.values():
            print(host.log_tails())  # shown when the test fails
            host.workers.stop()
            kill_namespace(host.namespace)
            for index in range(2):  # a killed zygote leaves its socket behind
                zygote.socket_path(f"cpu-{host.name}-{index}", str(host.data_dir)).unlink(missing_ok=True)
        postgres.close()
        redis.close()
        Device.objects.filter(pk__in=session_devices).update(enabled=True)


# -- the tests ----------------------------------------------------------------------------


def ranks_running(model_id: int) -> list[psutil.Process]:
    """The training processes of this job alive now, on any host (all share this kernel).
    Only this session's: another test session on this machine has its own job folders."""
    marker = f"{settings.JOBS_DIR}/{model_id}/"
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "models_app.training.train" in cmdline and marker in cmdline:
            found.append(proc)
    return found


def gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def labels(model_id: int, attempt: int) -> list[tuple[int, str, str]]:
    """(rank, device, outcome) of each rank of one attempt."""
    rows = Allocation.objects.filter(job_id=model_id, attempt=attempt).select_related("device").order_by("rank")
    return [(a.rank, a.device.label, a.outcome) for a in rows]


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_ddp_spans_two_hosts_and_survives_losing_one(
    hosts: dict[str, Host], api: APIClient, admin_user: User, shapes_folder: Path
) -> None:
    """A 2-rank job on hosta and hostb; hostb dies (every process, kill -9) after the
    first snapshot: the job is requeued and resumes from its last snapshot on hosta's two
    devices, and completes with every iteration recorded exactly once."""
    host_a, host_b = hosts["hosta"], hosts["hostb"]
    admin = token_client(admin_user)
    dataset_id = built_dataset(api, shapes_folder)
    # hosta's second device drained (as an admin would): 2 devices means one per host.
    spare = Device.objects.get(host="hosta", index=1)
    assert spare.worker == "cpu1@hosta" and spare.address == host_a.address  # its own host name and address
    assert admin.patch(f"/api/devices/{spare.pk}/", {"enabled": False}, format="json").status_code == 200
    model_id = submit(api, dataset_id, name="spread", devices=2, multi_host=True, epochs=EPOCHS,
                      snapshot_interval=2, val_interval=2)
    wait_until(lambda: Allocation.objects.filter(job_id=model_id, started_at__isnull=False).count() == 2, 60, "both ranks")
    assert admin.patch(f"/api/devices/{spare.pk}/", {"enabled": True}, format="json").status_code == 200
    (first,) = set(Allocation.objects.filter(job_id=model_id).values_list("attempt", flat=True))
    assert [(r, d) for r, d, _ in labels(model_id, first)] == [(0, "hosta/cpu0"), (1, "hostb/cpu0")]
    wait_until(lambda: api.get(f"/api/models/{model_id}/").json()["snapshots"], 120, "the first snapshot")
    # Both ranks are training, one in each namespace.
    ranks = ranks_running(model_id)
    pids = {proc.pid for proc in ranks}
    assert pids & set(namespace_pids(host_a.namespace)) and pids & set(namespace_pids(host_b.namespace))

    host_b.kill()
    # No rank of that run is left: hostb's died with it, hosta's stops once it notices (the
    # next run may already have started on hosta: these are the processes of the first).
    wait_until(lambda: all(gone(proc) for proc in ranks), 60, "every rank to stop")
    wait_until(
        lambda: JobEvent.objects.filter(job_id=model_id, status="queued", message__startswith="Interrupted: ").exists(),
        30, "the job to be requeued",
    )
    done = wait_for_status(api, f"/api/models/{model_id}/", {"done", "error"}, timeout=240)
    assert done["job"]["status"] == "done", done["job"]

    # The first attempt met on hosta's address; the last ran on hosta alone.
    running = [e["message"] for e in done["job"]["timeline"] if e["status"] == "running"]
    assert len(running) == 2, done["job"]["timeline"]
    assert running[0].startswith(f"On hosta/cpu0, hostb/cpu0. 2 ranks meet at {host_a.address}:"), running
    assert running[1].startswith(f"On hosta/cpu0, hosta/cpu1. 2 ranks meet at {host_a.address}:"), running
    interrupted = [e["message"] for e in done["job"]["timeline"] if e["message"].startswith("Interrupted: ")]
    assert len(interrupted) == 1 and "Requeued to resume from the snapshot at epoch" in interrupted[0], interrupted
    match = re.search(r"snapshot at epoch ([\d.]+)", interrupted[0])
    assert match, interrupted
    epoch = float(match.group(1))
    assert 2 <= epoch < EPOCHS  # mid-job, after a snapshot
    assert any(n.startswith(f"Resumed from the snapshot at epoch {epoch:g}") for n in done["notices"]), done["notices"]
    # Every iteration once: the steps after the snapshot were dropped and run again.
    iterations = list(Metric.objects.filter(model_id=model_id, name="train_loss").values_list("iteration", flat=True))
    assert sorted(iterations) == list(range(1, EPOCHS * ITERATIONS_PER_EPOCH + 1))
    # Two attempts: the lost one (hostb's rank lost with its host, or released with the
    # job's requeue when rank 0 saw it first), and the one that completed.
    attempts = sorted(set(Allocation.objects.filter(job_id=model_id).values_list("attempt", flat=True)))
    assert len(attempts) == 2, attempts
    lost = labels(model_id, attempts[0])
    assert lost[0] == (0, "hosta/cpu0", "interrupted") and lost[1][:2] == (1, "hostb/cpu0"), lost
    assert lost[1][2] in ("lost", "interrupted"), lost
    assert labels(model_id, attempts[1]) == [(0, "hosta/cpu0", "done"), (1, "hosta/cpu1", "done")]
    assert not Device.objects.get(host="hostb").online


def echo_server() -> tuple[socket.socket, threading.Thread]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    """Send while reading the echo: a large payload flows both ways at once."""
    sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
    sender.start()
    received = bytearray()
    while len(received) < len(payload):
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        received += chunk
    sender.join(10)
    return bytes(received)


def ended(sock: socket.socket) -> bool:
    """The other side closed or reset the connection."""
    try:
        return sock.recv(10) == b""
    except ConnectionResetError:
        return True


def test_the_proxy_forwards_cuts_and_restores() -> None:
    server, _ = echo_server()
    before = set(threading.enumerate())
    try:
        with TcpProxy(("127.0.0.1", 0), server.getsockname()) as proxy:
            port = proxy.port
            open_ = socket.create_connection(("127.0.0.1", port), timeout=5)
            big = os.urandom(32 * 1024 * 1024)
            assert roundtrip(open_, b"hello") == b"hello" and roundtrip(open_, big) == big
            wait_until(lambda: proxy.connections == 1, 5, "the forwarded connection")
            proxy.cut()
            # The open connection is gone, and a new one is refused.
            assert ended(open_)
            open_.close()
            assert proxy.connections == 0 and not proxy.listening
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5)
            proxy.cut()  # idempotent
            proxy.restore()
            assert proxy.port == port
            with socket.create_connection(("127.0.0.1", port), timeout=5) as again:
                assert roundtrip(again, b"back") == b"back"
            # Cut and restored again, with connections in flight.
            clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
            wait_until(lambda: proxy.connections == 5, 5, "five forwarded connections")
            proxy.cut()
            proxy.restore()
            for client in clients:
                client.close()
            with socket.create_connection(("127.0.0.1", port), timeout=5) as third:
                assert roundtrip(third, b"third") == b"third"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        assert not [t for t in set(threading.enumerate()) - before if t.name.startswith("netproxy")]
    finally:
        server.close()
