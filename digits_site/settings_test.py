"""Test settings: real Postgres and a dedicated Redis database, data in a temp folder."""
from __future__ import annotations

import os
import tempfile

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/13")
os.environ.setdefault("DIGITS_DATA_DIR", tempfile.mkdtemp(prefix="digits-test-"))
# The test data folder is the one thing test settings make: `serve` makes it in production.
os.makedirs(os.path.join(os.environ["DIGITS_DATA_DIR"], "static"), exist_ok=True)
os.environ.setdefault("DIGITS_DATA_ROOTS", os.path.join(os.environ["DIGITS_DATA_DIR"], "images"))
os.environ.setdefault("DIGITS_CHANNEL_PREFIX", "digits-test")
# Two CPU devices of one thread each; heartbeats fast enough that a killed worker is
# noticed in seconds.
os.environ.setdefault("DIGITS_CPU_DEVICES", "2")
os.environ.setdefault("DIGITS_CPU_DEVICE_THREADS", "1")
os.environ.setdefault("DIGITS_DEVICE_HEARTBEAT_SECONDS", "0.5")
os.environ.setdefault("DIGITS_DEVICE_DEAD_SECONDS", "4")
os.environ.setdefault("DIGITS_RENDEZVOUS_SECONDS", "30")
# The tests' S3 server (tests/s3server.py) listens on this machine's loopback.
os.environ.setdefault("DIGITS_S3_ALLOWED_ENDPOINTS", "http://127.0.0.1:")

from .settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
