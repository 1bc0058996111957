"""Training throughput benchmark: the whole system against a plain PyTorch loop.

    .venv/bin/python -m bench.training            # LeNet on 10k 28x28 grey, ResNet-18 on 1.5k 64x64 colour
    .venv/bin/python -m bench.training --quick    # smaller sets, fewer epochs

For each case, in the same run and on the same LMDB dataset:
  * the system: a dataset built by the worker, then a model created with the services,
    trained by a real Celery worker in its child process, with its metrics relayed
    through Redis into the database (SQLite in a temporary folder; Redis db 12);
  * a plain loop (bench/plain_loop.py, a fresh process like the child): the same network,
    optimizer, batch size, epochs and thread count over the same images already in
    memory as normalised float tensors (the ideal input pipeline), with nothing else:
    no metrics, no validation, no snapshots;
  * runs alternate (plain, system, plain, system, plain, system, plain) because this machine
    drifts by 20 % within a minute; the best of each counts, and so does the median of each
    system run against the mean of the plain runs on either side of it ("paired");
  * both run under the same settings the worker gives the training child: denormal
    floats flushed to zero (without it either loop can lose 20 % at random to denormal
    arithmetic) and the malloc variables of `models_app.training.CHILD_ENV`;
  * the ratio of the system's training-loop images/s, its steady state (which includes its
    data pipeline, metric reporting and the snapshots written while it trains, but not
    validation nor the wait for the last snapshot's file after the last step) to the plain
    loop's (target ≥ 0.97, issue 12), and the end-to-end ratio of the whole job (start-up,
    validation, the last snapshot and all).
"""
from __future__ import annotations

import argparse
import os
import statistics
import shutil
import subprocess
import sys
from pathlib import Path

from bench.harness import ROOT, isolated_django, wait

WORK = isolated_django("digits-bench-train-")

import torch  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402

from bench.dataset_build import make_folder  # noqa: E402
from datasets.services import dataset_create  # noqa: E402
from models_app.models import TrainedModel  # noqa: E402
from models_app.training import CHILD_ENV  # noqa: E402
from models_app.services import model_create  # noqa: E402


RUNS = 3  # system runs per case, with a plain run before, between and after


def plain_loop(network: str, train_db: Path, mean_path: Path, epochs: int, batch: int, lr: float) -> float:
    """images/s of bench/plain_loop.py in a fresh process (see there)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.plain_loop", str(train_db), str(mean_path), network, str(epochs), str(batch), str(lr)],
        cwd=ROOT, check=True, capture_output=True, text=True, env={**os.environ, **CHILD_ENV},
    )
    return float(out.stdout.strip().splitlines()[-1])


def run_case(owner, name: str, network: str, size: int, mode: str, count: int, epochs: int, batch: int, lr: float) -> dict:
    folder = make_folder(WORK / "images" / name, count, (size, size), "RGB" if mode == "color" else "L", "png")
    dataset = dataset_create(
        owner=owner, name=name, folder=str(folder), image_width=size, image_height=size, image_mode=mode, encoding="none",
        val_percent=10,
    )
    wait(dataset.pk)
    dataset.refresh_from_db()
    mean = dataset.mean_path
    train_db = dataset.split_path("train")

    plains = [plain_loop(network, train_db, mean, epochs, batch, lr)]
    systems = []
    for run in range(RUNS):
        model = model_create(
            owner=owner, name=f"{name}-{network}-{run}", dataset=dataset, network=network, epochs=epochs,
            batch_size=batch, learning_rate=lr, snapshot_interval=1, val_interval=1,
        )
        job = wait(model.pk)
        systems.append((TrainedModel.objects.get(pk=model.pk).timings, job))
        plains.append(plain_loop(network, train_db, mean, epochs, batch, lr))
    timings, job = max(systems, key=lambda pair: pair[0]["images_per_second"])
    plain = max(plains)
    # Each system run against the mean of the plain runs just before and after it: the
    # machine drifts, and a best-of-each ratio compares runs minutes apart.
    pair_ratios = [t["images_per_second"] / ((before + after) / 2) for (t, _), before, after in zip(systems, plains, plains[1:])]
    images = epochs * dataset.counts["train"]
    job_seconds = (job.finished_at - job.started_at).total_seconds()
    return {
        "case": name, "network": network, "train_images": dataset.counts["train"], "epochs": epochs, "batch": batch,
        "plain": plain, "plain_runs": plains, "system_runs": [t["images_per_second"] for t, _ in systems],
        "system": timings["images_per_second"],
        "ratio": timings["images_per_second"] / plain, "pair_ratios": pair_ratios, "pair_median": statistics.median(pair_ratios),
        "job_seconds": job_seconds, "job_rate": images / job_seconds,
        "end_to_end_ratio": images / job_seconds / plain, "timings": timings,
    }


def start_worker() -> subprocess.Popen:
    log = (WORK / "worker.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "digits_site", "worker", "-Q", "datasets", "-c", "1",
         "--loglevel", "WARNING", "-n", "bench@%h", "--without-mingle", "--without-gossip"],
        # One worker builds the datasets and is the one CPU device (its own queue too).
        cwd=ROOT, env={**os.environ, "DIGITS_DEVICE": "cpu:0", "DIGITS_CPU_DEVICES": "1"},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (datasets, snapshots, logs)")
    args = parser.parse_args()
    import redis

    try:
        redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    except redis.RedisError as exc:
        raise SystemExit(f"Redis is not reachable at {os.environ['REDIS_URL']} ({exc}): start redis-server or set BENCH_REDIS_URL.") from None
    call_command("prepare")  # data folders, secret key, tables
    owner = get_user_model().objects.create_user("bench", password="bench-only")
    worker = start_worker()
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, {'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}")
    quick = args.quick
    cases = [
        ("lenet28", "lenet", 28, "grayscale", 3000 if quick else 10000, 2 if quick else 4, 64, 0.01),
        ("resnet64", "resnet18", 64, "color", 500 if quick else 1500, 1 if quick else 2, 32, 0.01),
    ]
    try:
        results = [run_case(owner, *case) for case in cases]
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(30)
        if not args.keep:  # datasets, snapshots and logs: hundreds of MB otherwise left in /tmp
            shutil.rmtree(WORK, ignore_errors=True)
    print()
    print(f"{'case':10} {'network':9} {'train imgs':>10} {'epochs':>6} {'plain img/s':>12} {'system img/s':>13} {'ratio':>6}"
          f" {'paired':>7} {'spread':>7} {'job s':>7} {'job img/s':>10} {'e2e ratio':>9}")
    for r in results:
        spread = max(r["pair_ratios"]) - min(r["pair_ratios"])
        print(f"{r['case']:10} {r['network']:9} {r['train_images']:>10} {r['epochs']:>6} {r['plain']:>12.0f} {r['system']:>13.0f}"
              f" {r['ratio']:>6.3f} {r['pair_median']:>7.3f} {spread:>7.3f} {r['job_seconds']:>7.1f} {r['job_rate']:>10.0f}"
              f" {r['end_to_end_ratio']:>9.3f}")
    print()
    for r in results:
        t = r["timings"]
        runs = " / ".join(f"{v:.0f}" for v in r["plain_runs"])
        system_runs = " / ".join(f"{v:.0f}" for v in r["system_runs"])
        print(f"{r['case']}: plain runs {runs} img/s; system runs {system_runs} img/s; best system: start-up {t['startup_seconds']:.1f} s, "
              f"training {t['train_seconds']:.1f} s (snapshots {t['snapshot_seconds']:.2f} s), validation {t['validation_seconds']:.1f} s")
    print("\nratio: best system run / best plain run; paired: median over the system runs of each one / the mean of the\n"
          "plain runs just before and after it (spread: max - min of those).")
    print(f"(target: ratio >= 0.97; work folder {WORK}{'' if args.keep else ', removed; --keep keeps it'})")


if __name__ == "__main__":
    main()
