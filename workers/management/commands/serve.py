"""`make run`: migrate, make sure Redis answers, create the first admin, then run the web
server and the Celery workers (one per GPU, or a CPU worker) until Ctrl-C. A process that
dies is restarted with a backoff (workers/supervisor.py); the others keep running."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import sys
import time
from typing import Any
from urllib.parse import urlparse

import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from workers.hardware import DEVICE_ENV, gpu_count
from workers.inference import INFERENCE_QUEUE
from workers.setup import prepare_data_dir
from workers.supervisor import Supervisor


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def _stop_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops everything the way Ctrl-C does


class Command(BaseCommand):
    help = "Run the whole system: web server (ASGI, websockets) and Celery workers."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("DIGITS_HOST", "0.0.0.0"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("DIGITS_PORT", "8000")))
        parser.add_argument(
            "--cpu-devices", type=int, default=settings.CPU_DEVICES,
            help="CPU 'devices' (training workers) when there is no GPU; default DIGITS_CPU_DEVICES",
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        self.supervisor = Supervisor(settings.BASE_DIR, say=self.stdout.write)
        signal.signal(signal.SIGTERM, _stop_signal)
        try:
            prepare_data_dir()  # before anything reads the data directory or the secret key
            self.start_redis_if_needed()
            call_command("migrate", interactive=False, verbosity=0)
            self.ensure_admin()
            self.start_workers(opts["cpu_devices"])
            self.spawn(
                "web",
                [sys.executable, "-m", "daphne", "-b", opts["host"], "-p", str(opts["port"]), "digits_site.asgi:application"],
            )
            shown = "localhost" if opts["host"] in ("0.0.0.0", "::") else opts["host"]
            self.stdout.write(self.style.SUCCESS(f"DIGITS-NG is up: http://{shown}:{opts['port']}/  (Ctrl-C stops everything)"))
            self.supervisor.run_forever()
        except KeyboardInterrupt:
            self.stdout.write("Stopping…")
        finally:
            self.supervisor.stop_all()

    def spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self.supervisor.spawn(name, cmd, env)

    def start_redis_if_needed(self) -> None:
        url = settings.REDIS_URL
        if redis_answers(url):
            return
        parsed = urlparse(url)
        if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise CommandError(f"Redis does not answer at {url}. Start it, or unset REDIS_URL to run a local one.")
        server = shutil.which("redis-server")
        if server is None:
            raise CommandError(
                "Redis is not running and redis-server is not installed. "
                "Install it (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis) or set REDIS_URL."
            )
        port = str(parsed.port or 6379)
        self.stdout.write(f"Starting redis-server on port {port}…")
        self.spawn("redis", [server, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        for _ in range(50):
            if redis_answers(url):
                return
            time.sleep(0.1)
        raise CommandError("redis-server started but does not answer; see its output above.")

    def ensure_admin(self) -> None:
        User = get_user_model()
        if User.objects.filter(is_superuser=True).exists():
            return
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser("admin", "", password)
        path = settings.DATA_DIR / "admin_password.txt"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
        self.stdout.write(self.style.WARNING(f"Created the first admin account 'admin'; its password is in {path}"))

    def start_workers(self, cpu_devices: int) -> None:
        """Dataset builds get their own worker (they never wait behind training), and so do
        inference requests; each device gets one worker pinned to it, consuming only that
        device's queue."""
        celery = [
            sys.executable, "-m", "celery", "-A", "digits_site", "worker", "--loglevel", "INFO", "-c", "1",
            "--without-mingle", "--without-gossip",
        ]
        self.spawn("datasets worker", [*celery, "-Q", "datasets", "-n", "datasets@%h"])
        # Classify requests: on the CPU, so they are answered while every GPU trains; two
        # threads, so a slow request (a custom network's sandbox) does not hold up the next.
        inference = [*celery[:-4], "-P", "threads", "-c", "2", "--without-mingle", "--without-gossip"]
        self.spawn("inference worker", [*inference, "-Q", INFERENCE_QUEUE, "-n", "inference@%h"], {"CUDA_VISIBLE_DEVICES": ""})
        gpus = gpu_count()
        if gpus:
            for index in range(gpus):
                env = {"CUDA_VISIBLE_DEVICES": str(index), DEVICE_ENV: f"gpu:{index}"}
                self.spawn(f"gpu{index} worker", [*celery, "-n", f"gpu{index}@%h"], env)
            self.stdout.write(f"Started {gpus} GPU worker(s).")
        else:
            cpu_devices = max(1, cpu_devices)
            for index in range(cpu_devices):
                env = {"CUDA_VISIBLE_DEVICES": "", DEVICE_ENV: f"cpu:{index}", "DIGITS_CPU_DEVICES": str(cpu_devices)}
                self.spawn(f"cpu{index} worker", [*celery, "-n", f"cpu{index}@%h"], env)
            self.stdout.write(f"No GPU found: started {cpu_devices} CPU device worker(s).")
