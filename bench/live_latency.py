"""Trainer → page latency: how old the newest point is when it reaches a page's websocket.

    .venv/bin/python -m bench.live_latency [--seconds 40]

In the same run: a LeNet training on a generated dataset through the real system (a
Celery worker running the training child, its events relayed to the database and
published through Redis) while a websocket client subscribed like the model page
(Channels' consumer, the Redis channel layer) receives its messages. For each "metrics"
message: its arrival time minus the trainer's emit time of its newest point (`sent_at`),
batching in the trainer and the relay included. The baseline, measured in the same run: a
message published by this process to the same group and received on the same socket (the
Redis channel layer and the consumer alone). Goal (issue 15): p95 < 200 ms.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import sys
import time

from bench.harness import isolated_django, start_worker, stop_workers, wait

WORK = isolated_django("digits-bench-latency-")

from asgiref.sync import sync_to_async  # noqa: E402
from channels.testing import WebsocketCommunicator  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402

from bench.dataset_build import make_folder  # noqa: E402
from datasets.services import dataset_create  # noqa: E402
from digits_site.asgi import application  # noqa: E402
from models_app.services import model_create  # noqa: E402
from workers.events import publish  # noqa: E402
from workers.models import Job, JobStatus  # noqa: E402
from workers.services import job_abort  # noqa: E402


async def listen(job_id: int, cookie: str, seconds: float, pings: int) -> tuple[list[float], list[float]]:
    """(latencies of the trainer's points, latencies of this process's pings), in seconds."""
    communicator = WebsocketCommunicator(
        application, f"/ws/jobs/{job_id}/", headers=[(b"cookie", cookie.encode()), (b"origin", b"http://testserver")]
    )
    connected, _ = await communicator.connect()
    if not connected:
        raise SystemExit("the websocket refused the benchmark's user")
    points: list[float] = []
    baseline: list[float] = []
    deadline = time.monotonic() + seconds

    async def ping() -> None:  # the baseline's messages, spread over the run
        for _ in range(pings):
            await asyncio.sleep(seconds / max(1, pings))
            await sync_to_async(publish)(job_id, {"type": "bench-ping", "sent_at": time.time()})

    pinger = asyncio.create_task(ping())
    try:
        # A receive that times out cancels the consumer (asgiref's communicator): wait long,
        # messages come several times a second.
        while time.monotonic() < deadline:
            message = await communicator.receive_json_from(timeout=30)
            arrived = time.time()
            if message.get("type") == "metrics" and message.get("sent_at"):
                points.append(arrived - message["sent_at"])
            elif message.get("type") == "bench-ping":
                baseline.append(arrived - message["sent_at"])
    finally:
        pinger.cancel()
        await communicator.disconnect()
    return points, baseline


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered) * 1000:6.1f} ms  p95 {p95 * 1000:6.1f} ms  (n={len(ordered)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40)
    args = parser.parse_args()
    import redis

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    call_command("prepare")
    owner = get_user_model().objects.create_user("bench", password="bench-only")
    workers = [
        start_worker(WORK, "datasets", ["-Q", "datasets", "-c", "1"], {}),
        start_worker(WORK, "cpu0", ["-c", "1"], {"DIGITS_DEVICE": "cpu:0", "DIGITS_CPU_DEVICES": "1"}),
    ]
    try:
        folder = make_folder(WORK / "images" / "digits", 3000, (28, 28), "L", "png", classes=3)
        dataset = dataset_create(owner=owner, name="bench", folder=str(folder), image_width=28, image_height=28,
                                 image_mode="grayscale", val_percent=10)
        wait(dataset.pk, poll=0.5)
        model = model_create(owner=owner, name="live", dataset=dataset, network="lenet", epochs=1000, batch_size=64,
                             val_interval=1, snapshot_interval=500)
        deadline = time.monotonic() + 120
        while Job.objects.get(pk=model.pk).status != JobStatus.RUNNING:
            if time.monotonic() > deadline:
                raise SystemExit("the training job did not start")
            time.sleep(0.2)
        time.sleep(3)  # into its training loop
        client = Client()
        client.force_login(owner)
        cookie = f"sessionid={client.cookies['sessionid'].value}"
        points, baseline = asyncio.run(listen(model.pk, cookie, args.seconds, pings=100))
        job_abort(Job.objects.get(pk=model.pk))
    finally:
        stop_workers(workers)
        shutil.rmtree(WORK, ignore_errors=True)
    if not points or not baseline:
        raise SystemExit("no live messages arrived")
    print(f"\ntrainer → websocket, LeNet training on a CPU device, {args.seconds:g} s of messages")
    print(f"  newest point of each message:          {summary(points)}")
    print(f"  baseline, Redis channel layer alone:   {summary(baseline)}")
    base50 = statistics.median(baseline)
    print(f"  p50 ratio to the baseline: {statistics.median(points) / base50:.1f}   (goal: p95 < 200 ms)")


if __name__ == "__main__":
    main()
