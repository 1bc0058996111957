"""Classify-one latency through the system: the REST API, the inference worker and back.

    .venv/bin/python -m bench.inference            # 200 requests idle, 200 while a job trains
    .venv/bin/python -m bench.inference --quick    # 50 and 50

In the same run:
  * a LeNet trained on a small generated dataset by the real workers (SQLite in a
    temporary folder; Redis db 12), and a real inference worker (`-Q inference`, threads);
  * the baseline: this process loading the same snapshot once and classifying the same
    image in a loop (preprocessing + forward pass, nothing else);
  * the system: `POST /api/models/<id>/classify/` through Django's test client (the whole
    view, the request to the inference worker through Redis and its answer), warm: p50
    and p95 of the latency, and its ratio to the baseline's p50;
  * the same while a long training job keeps the CPU device busy (DIGITS' own test:
    inference while a job holds every device);
  * with `views` (every layer's pictures and statistics, Grad-CAM): p50;
  * classify many: an evaluation job over the validation split (the system's loop, as
    the child reports it) against bench/plain_eval.py (the same snapshot, preprocessing,
    batch size and threads over the split already in memory), 3 alternating runs each,
    the best of each;
  * export and verify: 3 export jobs of the snapshot (ONNX and torch.export, each checked
    against PyTorch): each format's export time, its batch-1 latency and the ratio to
    PyTorch's own latency measured in the same job, and the whole job's time.
Goals (issue 13): warm classify-one for LeNet on CPU, p50 <= 100 ms end to end; classify
many >= 0.9 of the plain loop.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.harness import ROOT, isolated_django, start_worker, stop_workers, wait

WORK = isolated_django("digits-bench-inference-")

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from PIL import Image  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402

from bench.dataset_build import make_folder  # noqa: E402
from datasets.services import dataset_create  # noqa: E402
from models_app.models import TrainedModel  # noqa: E402
from models_app.services import model_create  # noqa: E402
from workers.models import Job, JobStatus  # noqa: E402
from workers.services import job_abort  # noqa: E402


def image_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (40, 30), 200).save(buffer, "PNG")
    return buffer.getvalue()


def baseline(model: TrainedModel, image: bytes, count: int) -> list[float]:
    """Seconds per classification in this process: preprocessing and forward pass."""
    import torch

    from models_app.inference import load_network, preprocess

    torch.set_num_threads(1)  # as the inference worker (DIGITS_INFERENCE_THREADS)
    snapshot = model.snapshots.order_by("-iteration").first()
    assert snapshot is not None
    net = load_network(snapshot)
    times = []
    for _ in range(count + 10):
        started = time.perf_counter()
        _, x = preprocess(model, image)
        with torch.no_grad():
            torch.softmax(net(x), dim=1)
        times.append(time.perf_counter() - started)
    return times[10:]


def through_api(client: APIClient, model_id: int, image: bytes, count: int, views: bool = False) -> list[float]:
    times = []
    for i in range(count + 5):
        upload = io.BytesIO(image)
        upload.name = "x.png"
        started = time.perf_counter()
        response = client.post(f"/api/models/{model_id}/classify/", {"image": upload, "views": views}, format="multipart")
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise SystemExit(f"classify failed: {response.status_code} {response.content[:500]!r}")
        if i >= 5:  # the first requests load the snapshot
            times.append(elapsed)
    return times


def evaluation_runs(owner: Any, model: TrainedModel) -> tuple[list[float], list[float]]:
    """(system images/s, plain images/s), alternating plain and system runs."""
    from models_app.evaluations import evaluation_create
    from models_app.models import Evaluation

    snapshot = model.snapshots.order_by("-iteration").first()
    assert snapshot is not None
    plain_cmd = [sys.executable, "-m", "bench.plain_eval", str(model.dataset.split_path("val")), str(model.dataset.mean_path),
                 str(snapshot.path), "64"]

    def plain() -> float:
        out = subprocess.run(plain_cmd, cwd=ROOT, check=True, capture_output=True, text=True)
        return float(out.stdout.strip().splitlines()[-1])

    systems, plains = [], [plain()]
    for _ in range(3):
        evaluation = evaluation_create(owner=owner, model=model, epoch=None, split="val")
        wait(evaluation.pk, poll=0.5)
        systems.append(Evaluation.objects.get(pk=evaluation.pk).metrics["images_per_second"])
        plains.append(plain())
    return systems, plains


def export_runs(owner: Any, model: TrainedModel, runs: int = 3) -> list[dict[str, Any]]:
    """Export and verify the latest snapshot `runs` times (jobs through the real worker):
    each run's results (per format: export seconds, p50/p95 latency) and its job time."""
    from models_app.exports import export_create
    from models_app.models import Export

    out = []
    for _ in range(runs):
        export = export_create(owner=owner, model=model, epoch=None)
        job = wait(export.pk, poll=0.5)
        results = Export.objects.get(pk=export.pk).results
        out.append({**results, "job_seconds": (job.finished_at - job.started_at).total_seconds()})
    return out


def summary(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered) * 1000, ordered[int(0.95 * (len(ordered) - 1))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    count = 50 if args.quick else 200
    import redis

    # A timeout's SIGTERM ends the run through `finally`: no worker is left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    call_command("prepare")
    owner = get_user_model().objects.create_user("bench", password="bench-only")
    workers = [
        start_worker(WORK, "datasets", ["-Q", "datasets", "-c", "1"], {}),
        start_worker(WORK, "cpu0", ["-c", "1"], {"DIGITS_DEVICE": "cpu:0", "DIGITS_CPU_DEVICES": "1"}),
        start_worker(WORK, "inference", ["-Q", "inference", "-P", "threads", "-c", "2"], {"CUDA_VISIBLE_DEVICES": ""}),
    ]
    try:
        folder = make_folder(WORK / "images" / "digits", 6000, (28, 28), "L", "png", classes=3)
        dataset = dataset_create(owner=owner, name="bench", folder=str(folder), image_width=28, image_height=28,
                                 image_mode="grayscale", val_percent=50)
        wait(dataset.pk, poll=0.5)
        model = model_create(owner=owner, name="lenet", dataset=dataset, network="lenet", epochs=1, batch_size=128)
        wait(model.pk, poll=0.5)
        model = TrainedModel.objects.select_related("dataset").get(pk=model.pk)
        client = APIClient()
        client.force_authenticate(owner)
        image = image_bytes()

        plain = baseline(model, image, count)
        idle = through_api(client, model.pk, image, count)
        views = through_api(client, model.pk, image, max(10, count // 10), views=True)
        # A long job on the only device: inference must still answer, from its own worker.
        busy_model = model_create(owner=owner, name="busy", dataset=dataset, network="lenet", epochs=1000)
        deadline = time.monotonic() + 120
        while Job.objects.get(pk=busy_model.pk).status != JobStatus.RUNNING:
            if time.monotonic() > deadline:
                raise SystemExit("the busy job did not start")
            time.sleep(0.2)
        time.sleep(3)  # into its training loop
        busy = through_api(client, model.pk, image, count)
        job_abort(Job.objects.get(pk=busy_model.pk))
        evaluation_rates, plain_rates = evaluation_runs(owner, model)
        exports = export_runs(owner, model, runs=1 if args.quick else 3)
    finally:
        stop_workers(workers)
        shutil.rmtree(WORK, ignore_errors=True)

    base50, base95 = summary(plain)
    print(f"\nclassify one LeNet 28x28 image, CPU, {count} warm requests each")
    print(f"{'':34} {'p50 ms':>8} {'p95 ms':>8} {'p50 / baseline':>15}")
    print(f"{'baseline (in-process forward)':34} {base50:>8.1f} {base95:>8.1f} {1.0:>15.1f}")
    for label, times in (("API, idle system", idle), ("API, a job training on the CPU", busy), ("API with views", views)):
        p50, p95 = summary(times)
        print(f"{label:34} {p50:>8.1f} {p95:>8.1f} {p50 / base50:>15.1f}")
    print("\n(goal: p50 <= 100 ms through the API on an idle system; the difference to the baseline is the HTTP view, "
          "Redis and the inference worker's task)")
    print(f"\nclassify many (an evaluation of the {model.dataset.counts['val']}-image validation split, batch 64):")
    print("  system runs " + " / ".join(f"{v:.0f}" for v in evaluation_rates) + " img/s; plain runs "
          + " / ".join(f"{v:.0f}" for v in plain_rates) + " img/s")
    print(f"  ratio (best / best) {max(evaluation_rates) / max(plain_rates):.3f}  (goal >= 0.9)")

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    print(f"\nexport and verify (LeNet, {len(exports)} run(s); median (min-max); latency at batch 1, 10 warm-ups, 100 runs):")
    print(f"{'':10} {'status':>8} {'export s':>18} {'p50 ms':>18} {'p50 / PyTorch p50':>18} {'max abs diff':>13}")
    torch_p50 = [e["formats"]["pytorch"]["p50_ms"] for e in exports]
    for fmt in ("pytorch", "onnx", "pt2"):
        rows = [e["formats"][fmt] for e in exports]
        seconds = [r["export_seconds"] for r in rows if r["export_seconds"] is not None]
        p50 = [r["p50_ms"] for r in rows if r["p50_ms"] is not None]
        ratios = [r["p50_ms"] / t for r, t in zip(rows, torch_p50) if r["p50_ms"] is not None]
        diff = max((r["max_abs_diff"] for r in rows if r["max_abs_diff"] is not None), default=None)
        print(f"{fmt:10} {'/'.join(sorted({r['status'] for r in rows})):>8} {spread(seconds) if seconds else '-':>18} "
              f"{spread(p50) if p50 else '-':>18} {spread(ratios) if ratios else '-':>18} {f'{diff:.2e}' if diff is not None else '-':>13}")
    print(f"  whole export job (start-up, weights, both exports and their checks): {spread([e['job_seconds'] for e in exports])} s")


if __name__ == "__main__":
    main()
