"""Segmentation and detection training throughput: the whole system against a plain
torchvision loop, and what the small networks reach on the synthetic shapes.

    .venv/bin/python -m bench.tasks            # U-Net and FCOS on 600 shapes of 64x64
    .venv/bin/python -m bench.tasks --quick    # fewer images and epochs
    .venv/bin/python -m bench.tasks --throughput-only   # the ratios alone, without the quality runs

For each task, in the same run and on the same datasets (built by the worker from
datasets/synthetic.py's shapes):
  * the system: a model created with the services, trained by a real Celery worker in
    its child process, metrics relayed into the database (SQLite in a temporary folder);
  * a plain loop (bench/plain_tasks.py, a fresh process like the child): the same
    network, optimizer, batch size and epochs over the same images already in memory as
    normalised tensors (with their label images or boxes), nothing else;
  * runs alternate (plain, system, plain, system, plain, system, plain), as this machine
    drifts; the median and the spread of each are printed, and the ratio of the medians
    (the system's training-loop images/s, without validation; target >= 0.95);
  * then one longer system run per task reports its quality: mean IoU, mAP@0.5.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys

from bench.harness import ROOT, isolated_django, start_worker, wait

WORK = isolated_django("digits-bench-tasks-")

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402

from datasets.services import dataset_create  # noqa: E402
from datasets.synthetic import write_shapes  # noqa: E402
from models_app.models import Metric, TrainedModel  # noqa: E402
from models_app.services import model_create  # noqa: E402
from models_app.training import CHILD_ENV  # noqa: E402

RUNS = 3


def plain(task: str, dataset, network: str, epochs: int, batch: int, lr: float) -> float:
    """images/s of bench/plain_tasks.py in a fresh process."""
    targets = dataset.label_split_path("train") if task == "segmentation" else dataset.objects_path("train")
    out = subprocess.run(
        [sys.executable, "-m", "bench.plain_tasks", task, str(dataset.split_path("train")), str(targets),
         str(dataset.mean_path), network, str(dataset.num_classes), str(epochs), str(batch), str(lr)],
        cwd=ROOT, check=True, capture_output=True, text=True, env={**os.environ, **CHILD_ENV},
    )
    return float(out.stdout.strip().splitlines()[-1])


def make_dataset(owner, task: str, count: int, size: int):
    folder = WORK / "images" / f"shapes-{task}"
    if not folder.exists():
        write_shapes(folder, count, size, seed=1)
    extra = {"label_folder": str(folder / "masks"), "class_list": str(folder / "classes.txt")} if task == "segmentation" \
        else {"label_folder": str(folder / "labels")}
    dataset = dataset_create(owner=owner, name=task, task=task, folder=str(folder / "images"), image_width=size,
                             image_height=size, encoding="none", val_percent=20, **extra)
    wait(dataset.pk)
    dataset.refresh_from_db()
    return dataset


def run_case(owner, task: str, network: str, dataset, epochs: int, batch: int, lr: float) -> dict:
    plains = [plain(task, dataset, network, epochs, batch, lr)]
    systems = []
    for run in range(RUNS):
        model = model_create(owner=owner, name=f"{task}-{run}", dataset=dataset, network=network, epochs=epochs,
                             batch_size=batch, learning_rate=lr, snapshot_interval=epochs, val_interval=epochs)
        wait(model.pk)
        systems.append(TrainedModel.objects.get(pk=model.pk).timings["images_per_second"])
        plains.append(plain(task, dataset, network, epochs, batch, lr))
    return {"task": task, "network": network, "plain": plains, "system": systems,
            "ratio": statistics.median(systems) / statistics.median(plains)}


def quality(owner, task: str, network: str, dataset, epochs: int, measure: str, lr: float) -> tuple[float, float]:
    """(the last validation's measure, the job's minutes) of a longer run (Adam, cosine)."""
    model = model_create(owner=owner, name=f"{task}-quality", dataset=dataset, network=network, epochs=epochs,
                         batch_size=16, solver="adam", learning_rate=lr, lr_policy="cosine", flip="h",
                         snapshot_interval=epochs, val_interval=max(1, epochs // 4))
    job = wait(model.pk)
    value = Metric.objects.filter(model_id=model.pk, name=measure).order_by("iteration").last()
    return (value.value if value else float("nan")), (job.finished_at - job.started_at).total_seconds() / 60


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.0f} (min {min(values):.0f}, max {max(values):.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--throughput-only", action="store_true", help="skip the longer quality runs")
    args = parser.parse_args()
    call_command("prepare")
    owner = get_user_model().objects.create_user("bench", password="bench-only")
    worker = start_worker(WORK, "bench", ["-Q", "datasets", "-c", "1"], {"DIGITS_DEVICE": "cpu:0", "DIGITS_CPU_DEVICES": "1"})
    count, epochs, long_epochs = (200, 1, 20) if args.quick else (600, 2, 60)
    try:
        datasets = {task: make_dataset(owner, task, count, 64) for task in ("segmentation", "detection")}
        results = [
            run_case(owner, "segmentation", "unet_small", datasets["segmentation"], epochs, 16, 0.01),
            run_case(owner, "detection", "fcos_small", datasets["detection"], epochs, 16, 0.01),
        ]
        reached = {} if args.throughput_only else {
            "segmentation": quality(owner, "segmentation", "unet_small", datasets["segmentation"], long_epochs, "val_miou", 0.003),
            # The small FCOS collapses (predicts nothing) with Adam at 0.003; 0.001 learns.
            "detection": quality(owner, "detection", "fcos_small", datasets["detection"], long_epochs // 2, "val_map50", 0.001),
        }
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(30)
        if not args.keep:
            shutil.rmtree(WORK, ignore_errors=True)
    print()
    for r in results:
        print(f"{r['task']:12} {r['network']:10} plain img/s {spread(r['plain'])}; system img/s {spread(r['system'])}; "
              f"ratio of medians {r['ratio']:.3f} (target >= 0.95)")
    for task, (value, minutes) in reached.items():
        what, epochs_run = ("mean IoU", long_epochs) if task == "segmentation" else ("mAP@0.5", long_epochs // 2)
        print(f"{task:12} after {epochs_run} epochs on {count * 4 // 5} images: {what} {value:.3f} in {minutes:.1f} min")


if __name__ == "__main__":
    main()
