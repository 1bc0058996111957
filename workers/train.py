"""Train an image classifier on a dataset's LMDB splits, reporting JSON lines on stdout.

The Celery worker launches this as a child process; it also runs by hand or under torchrun:

    python -m workers.train --spec job/spec.json
    torchrun --nproc-per-node 2 -m workers.train --spec job/spec.json

Spec keys: network, num_classes, input_shape [C,H,W], train_db, val_db, mean_path,
epochs, batch_size, learning_rate, momentum, weight_decay, seed, output_dir, num_workers.

Events (rank 0 only): {"event": "metrics", "iteration", "epoch", "values": {...}},
{"event": "progress", "progress", "eta"}, {"event": "snapshot", "epoch", "filename", ...},
{"event": "error", "message"}. Everything else (logging) goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from datasets.lmdb_store import LmdbImageDataset
from models_app.networks import network_module

log = logging.getLogger("workers.train")


class TrainingError(Exception):
    """A failure the user can act on; its message is shown on the job page."""


def emit(event: str, **data: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


def init_distributed() -> tuple[int, int, torch.device]:
    """Initialise torch.distributed from RANK/WORLD_SIZE when present (torchrun or the
    scheduler sets them): NCCL on GPUs, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world_size, device


def reduce_sum(values: list[float], device: torch.device, world_size: int) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if world_size > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a reader never sees half a snapshot


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    device: torch.device,
    epoch: int,
    iteration: int,
    report: bool,
    clock: dict[str, float],
) -> int:
    model.train()
    steps = len(loader)
    for step, (images, targets) in enumerate(loader):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        loss = criterion(model(images), targets)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"The loss became {loss.item()} at iteration {iteration} (epoch {epoch + 1}): "
                "training diverged. Try decreasing the learning rate."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        iteration += 1
        if report:
            progress_epoch = epoch + (step + 1) / steps
            emit(
                "metrics",
                iteration=iteration,
                epoch=round(progress_epoch, 6),
                values={"train_loss": loss.item(), "lr": optimizer.param_groups[0]["lr"]},
            )
            done = progress_epoch / clock["epochs"]
            elapsed = time.monotonic() - clock["start"]
            emit("progress", progress=done, eta=elapsed * (1 - done) / done if done > 0 else None)
    return iteration


@torch.no_grad()
def evaluate(
    model: nn.Module, criterion: nn.Module, loader: DataLoader, device: torch.device, world_size: int
) -> dict[str, float]:
    model.eval()
    loss_sum = correct1 = correct5 = count = 0.0
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        output = model(images)
        loss_sum += criterion(output, targets).item() * targets.size(0)
        top = output.topk(min(5, output.size(1)), dim=1).indices
        hits = top.eq(targets[:, None])
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        count += targets.size(0)
    loss_sum, correct1, correct5, count = reduce_sum([loss_sum, correct1, correct5, count], device, world_size)
    count = max(count, 1.0)
    return {"val_loss": loss_sum / count, "val_accuracy": correct1 / count, "val_top5": correct5 / count}


def main(spec: dict[str, Any]) -> None:
    rank, world_size, device = init_distributed()
    report = rank == 0
    seed = int(spec.get("seed", 0))
    torch.manual_seed(seed)
    np.random.seed(seed)
    out_dir = Path(spec["output_dir"])

    mean = np.load(spec["mean_path"]) if spec.get("mean_path") else None
    train_set = LmdbImageDataset(spec["train_db"], mean)
    val_set = LmdbImageDataset(spec["val_db"], mean)
    if len(train_set) == 0:
        raise TrainingError("The dataset's training split is empty.")
    train_sampler = DistributedSampler(train_set, seed=seed) if world_size > 1 else None
    generator = torch.Generator().manual_seed(seed)
    workers = int(spec.get("num_workers", 0))
    train_loader = DataLoader(
        train_set,
        batch_size=int(spec["batch_size"]),
        shuffle=train_sampler is None,
        sampler=train_sampler,
        generator=generator,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )
    val_sampler = DistributedSampler(val_set, shuffle=False) if world_size > 1 else None
    val_loader = DataLoader(val_set, batch_size=int(spec["batch_size"]), sampler=val_sampler, num_workers=0)

    input_shape = tuple(int(v) for v in spec["input_shape"])
    try:
        model = network_module(spec["network"]).build(input_shape, int(spec["num_classes"])).to(device)
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc
    if world_size > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=float(spec["learning_rate"]),
        momentum=float(spec.get("momentum", 0.9)),
        weight_decay=float(spec.get("weight_decay", 0.0)),
    )
    epochs = int(spec["epochs"])
    clock = {"start": time.monotonic(), "epochs": float(epochs)}
    iteration = 0
    bare = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    for epoch in range(epochs):
        if train_sampler is not None:
            train_sampler.set_epoch(epoch)
        iteration = train_one_epoch(model, criterion, optimizer, train_loader, device, epoch, iteration, report, clock)
        metrics = evaluate(model, criterion, val_loader, device, world_size) if len(val_set) else {}
        if not report:
            continue
        if metrics:
            emit("metrics", iteration=iteration, epoch=epoch + 1, values=metrics)
        filename = f"snapshot_epoch_{epoch + 1}.pt"
        save_checkpoint(
            out_dir / filename,
            {
                "model": bare.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1,
                "iteration": iteration,
                "network": spec["network"],
                "num_classes": int(spec["num_classes"]),
                "input_shape": list(input_shape),
            },
        )
        emit("snapshot", epoch=epoch + 1, filename=filename, **{k: metrics.get(k) for k in ("val_loss", "val_accuracy")})
    if world_size > 1:
        dist.destroy_process_group()


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train an image classifier from a job spec.")
    parser.add_argument("--spec", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    spec = json.loads(args.spec.read_text())
    try:
        main(spec)
    except TrainingError as exc:
        emit("error", message=str(exc))
        return 1
    except torch.OutOfMemoryError:
        emit("error", message="Out of memory. Try a smaller batch size.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
