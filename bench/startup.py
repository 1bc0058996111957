"""Job start-up: the training child started afresh against forked from a pre-imported zygote.

    .venv/bin/python -m bench.startup [--runs 3]

On one small LeNet dataset (28x28 grey, built here), a job of about five seconds of
training is run through the runner's own start paths, alternating:
  * direct: `python -m models_app.training.train --spec ...` (what a worker without a
    zygote does);
  * zygote: forked from `workers.zygote` with the trainer pre-imported (what a device
    worker does);
and, as the baseline, the plain loop of bench/plain_loop.py on the same images, batch
size and epochs. Printed: start-up (the child's process start to its training loop, as
it reports it; for a forked child the fork is its start), the job's wall
time, and the end-to-end ratio = plain-loop time for the same work / job wall time
(goal: start-up <= 1 s; end-to-end >= 0.8 for this 5-second job). Median and spread of
the runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.dataset_build import make_folder  # noqa: E402
from datasets.build import build  # noqa: E402
from models_app.training import CHILD_ENV  # noqa: E402
from workers import protocol, zygote  # noqa: E402

IMAGES, EPOCHS, BATCH, LR = 6000, 3, 64, 0.01


def child_env() -> dict[str, str]:
    return {**os.environ, **CHILD_ENV, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}


def run(start: str, spec_path: Path, log: IO[str], socket: Path) -> tuple[float, float]:
    """(the child's own start-up: process start to its training loop, the job's wall
    time from the request to the child's exit)."""
    began = time.perf_counter()
    args = ["--spec", str(spec_path)]
    if start == "zygote":
        proc: subprocess.Popen[bytes] | zygote.ZygoteChild = zygote.start(
            socket, "models_app.training.train", args, child_env(), str(ROOT), log.fileno()
        )
    else:
        proc = subprocess.Popen(
            [sys.executable, "-m", "models_app.training.train", *args], cwd=ROOT, env=child_env(),
            stdout=subprocess.PIPE, stderr=log, start_new_session=True,
        )
    assert proc.stdout is not None
    startup = None
    for line in proc.stdout:
        event = protocol.decode(line.decode())
        if isinstance(event, protocol.Summary):
            startup = event.startup_seconds
        if isinstance(event, protocol.Error):
            raise SystemExit(f"the job failed: {event.message}")
    code = proc.wait()
    if code != 0 or startup is None:
        raise SystemExit(f"the job exited with {code}; see {log.name}")
    return startup, time.perf_counter() - began


def plain(train_db: Path, mean: Path) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "bench.plain_loop", str(train_db), str(mean), "lenet", str(EPOCHS), str(BATCH), str(LR)],
        cwd=ROOT, check=True, capture_output=True, text=True, env=child_env(),
    )
    return float(out.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="digits-bench-startup-"))
    socket = work / "zygote.sock"
    server = None
    try:
        folder = make_folder(work / "images", IMAGES, (28, 28), "L", "png")
        data = work / "data"
        data.mkdir()
        result = build({
            "source": "folder", "folder": str(folder), "output_dir": str(data), "width": 28, "height": 28, "channels": 1,
            "encoding": "none", "val_percent": 10, "test_percent": 0, "seed": 0, "data_roots": [str(work)],
        })
        spec = {
            "network": "lenet", "num_classes": len(result["labels"]), "input_shape": [1, 28, 28],
            "train_db": str(data / "train_db"), "val_db": str(data / "val_db"), "mean_path": str(data / "mean.npy"),
            "epochs": EPOCHS, "batch_size": BATCH, "learning_rate": LR, "momentum": 0.9, "weight_decay": 0.0,
            "seed": 1, "num_workers": 0, "solver": "sgd", "snapshot_interval": EPOCHS, "val_interval": EPOCHS,
        }
        env = child_env()
        server = subprocess.Popen(
            [sys.executable, "-m", "workers.zygote", "--socket", str(socket), "--preload", "models_app.training.train"],
            cwd=ROOT, env=env, stderr=subprocess.DEVNULL,
        )
        while not socket.exists():
            time.sleep(0.05)
        images = result["counts"]["train"] * EPOCHS
        times: dict[str, list[tuple[float, float]]] = {"direct": [], "zygote": []}
        rates = [plain(data / "train_db", data / "mean.npy")]
        with (work / "job.log").open("a") as log:
            for i in range(args.runs):
                for start in ("direct", "zygote"):
                    out = work / f"out-{start}-{i}"
                    out.mkdir()
                    spec_path = out / "spec.json"
                    spec_path.write_text(json.dumps({**spec, "output_dir": str(out)}))
                    times[start].append(run(start, spec_path, log, socket))
                rates.append(plain(data / "train_db", data / "mean.npy"))
        plain_seconds = images / statistics.median(rates)
        print(f"LeNet, {result['counts']['train']} images x {EPOCHS} epochs, batch {BATCH}; {args.runs} runs each")
        print(f"baseline, plain loop: {statistics.median(rates):.0f} images/s -> {plain_seconds:.2f} s for the same work")
        for start, runs in times.items():
            firsts, walls = [f for f, _ in runs], [w for _, w in runs]
            ratios = [plain_seconds / w for w in walls]
            print(f"{start:6}: start-up (process start to training loop) {spread(firsts)} s; job {spread(walls)} s; "
                  f"end-to-end ratio {spread(ratios)}")
    finally:
        if server is not None:
            server.kill()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
