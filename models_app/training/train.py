"""Train an image classifier on a dataset's LMDB splits, reporting JSON lines on stdout.

The Celery worker launches this as a child process; it also runs by hand or under torchrun:

    python -m models_app.training.train --spec jobs/42/spec.json
    torchrun --nproc-per-node 2 -m models_app.training.train --spec jobs/42/spec.json

(the worker also sets the allocator variables of `models_app.training.CHILD_ENV`).

The spec (`TrainSpec` in spec.py, written by `models_app.services.model_train_spec`) holds
the dataset paths, the network (standard name or custom code), solver, learning-rate
policy, transforms and intervals; `resume_from` continues from a snapshot and `pretrained`
starts from weights. An unknown field is refused.

Events on stdout (rank 0 only), one versioned JSON line each (workers/protocol.py):
  {"event": "train", "rows": [[iteration, epoch, {"train_loss", "lr"}], ...]}
  {"event": "metrics", "iteration", "epoch", "values": {...}}   validation, throughput
  {"event": "progress", "progress", "eta", "next_snapshot_eta"}
  {"event": "snapshot", "epoch", "iteration", "filename", "val_loss", "val_accuracy", "val_top5"}
  {"event": "notice", "message"}                                  shown on the model page
  {"event": "summary", "startup_seconds", "train_seconds", "validation_seconds",
   "snapshot_seconds", "images", "images_per_second"}            where the time went
  {"event": "finished", "iteration"}                              every rank, its work done
  {"event": "error", "message"}                                   why the run failed
Everything else (logging) goes to stderr, which the worker keeps as the job log.

Iterations count optimizer steps: with batch accumulation k, one iteration is k batches.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import psutil
import torch

import torch._dynamo  # noqa: F401 - every optimizer imports it lazily (about 1 s): here, so a zygote pre-imports it
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F  # noqa: N812 - as torch's own docs name it

from workers import protocol

from models_app.metrics import segmentation_summary
from models_app.networks import NetworkCodeError, build_network, describe_code_error, user_line

from .augment import IGNORE_INDEX, BatchTransform, TransformSpec
from .data import Objects, Split, chunk, epoch_order, per_rank_count, shard
from .lr_policy import LrSchedule
from .solvers import make_optimizer
from .spec import TrainSpec
from .telemetry import DeviceReader

log = logging.getLogger("models_app.training")

# Flush buffered training losses (one device sync) at most this often.
# How often points leave the trainer. The newest point of each report is fresh when it
# leaves, so this does not set the page's latency (the relay does: ~70 ms p95,
# bench/live_latency.py); 0.1 s measured the same latency and cost 7-8 % of LeNet's
# throughput (bench/training --quick: 0.84 -> 0.77 of the plain loop).
REPORT_SECONDS = 0.5
# A loss this large, or this many times the first one, has exploded.
EXPLODED_LOSS = 1e4


class TrainingError(Exception):
    """A failure the user can act on; its message is shown on the job page."""


def emit(event: protocol.Event) -> None:
    """One event for the worker (workers/protocol.py), flushed at once."""
    protocol.emit(event)
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
        # A rank that never arrives, or stops answering, fails the others after this long
        # instead of hanging them (the scheduler then requeues the job).
        timeout = timedelta(seconds=float(os.environ.get("DIGITS_DIST_TIMEOUT", "600")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return rank, world_size, device


def rank_batch_size(spec: TrainSpec, world_size: int) -> int:
    """`batch_size` is the global batch: each of N ranks takes 1/N of it, so the same
    settings give the same curves on 1 or N devices."""
    batch = spec.batch_size
    if batch % world_size:
        raise TrainingError(
            f"The batch size {batch} cannot be split evenly over {world_size} devices; "
            f"use a multiple of {world_size}, or another number of devices."
        )
    return batch // world_size


def reduce_sum(values: list[float], device: torch.device, world_size: int) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if world_size > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a snapshot whole or not at all: a reader never sees half of one, and a failed
    write (a full disk) leaves no partial file behind. torch.save reports a failed write
    as a RuntimeError ("file write failed"): raised here as the OSError it is."""
    tmp = path.with_suffix(".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        # Told apart while the partial file still takes its room: a full disk has none left.
        full = isinstance(exc, RuntimeError) and shutil.disk_usage(tmp.parent).free < FULL_DISK_BYTES
        tmp.unlink(missing_ok=True)
        if full:
            raise OSError(errno.ENOSPC, "No space left on device") from exc
        raise


# Free space under which a failed torch.save is taken for a full disk (it reports one as a
# RuntimeError such as "unexpected pos", not as ENOSPC).
FULL_DISK_BYTES = 1024 * 1024


def cpu_copy(value: Any) -> Any:
    """A deep copy of a state dict whose tensors are on the CPU and owned by the copy."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: cpu_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(cpu_copy(v) for v in value)
    return value


def load_pretrained(net: nn.Module, path: str) -> list[str]:
    """Load every weight whose name and shape match; the rest (the classifier, when the
    class count differs) keep their fresh initialisation. Returns the re-initialised names."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    saved = saved.get("model", saved)
    own = net.state_dict()
    matching = {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}
    net.load_state_dict(matching, strict=False)
    return [k for k in own if k not in matching]


@dataclass
class Plan:
    """Iteration arithmetic shared by the loop, the LR schedule and the progress report."""

    batches_per_epoch: int  # per rank
    accumulation: int
    total_iterations: int
    val_every: int
    snapshot_every: int

    @property
    def iterations_per_epoch(self) -> int:
        return math.ceil(self.batches_per_epoch / self.accumulation)

    def epoch_of(self, iteration: int) -> float:
        return iteration / self.iterations_per_epoch

    @classmethod
    def make(cls, spec: TrainSpec, train_count: int, world_size: int) -> Plan:
        per_rank, size = per_rank_count(train_count, world_size), rank_batch_size(spec, world_size)
        batches = math.ceil(per_rank / size)
        if spec.task != "classification" and batches > 1 and per_rank % size == 1:
            batches -= 1  # the last image joins the batch before (Trainer._epoch_batches)
        accumulation = max(1, spec.batch_accumulation)
        per_epoch = math.ceil(batches / accumulation)
        return cls(
            batches_per_epoch=batches,
            accumulation=accumulation,
            total_iterations=max(1, math.ceil(spec.epochs * per_epoch)),
            val_every=max(1, round(spec.val_interval * per_epoch)),
            snapshot_every=max(1, round(spec.snapshot_interval * per_epoch)),
        )


class Trainer:
    def __init__(self, spec: TrainSpec) -> None:
        self.spec = spec
        self.rank, self.world_size, self.device = init_distributed()
        self.report = self.rank == 0
        # For the log line of each validation and the message of a divergence.
        self.last_loss: float | None = None
        self.last_lr: float | None = None
        self.last_throughput: float | None = None
        self.last_snapshot_epoch: float | None = None
        self.last_snapshot_iteration: int | None = None
        self.devices = DeviceReader(self.device, torch.get_num_threads())
        log.info(
            "rank %d of %d on %s; torch %s with %d threads; affinity %s",
            self.rank, self.world_size, self.device, torch.__version__, torch.get_num_threads(),
            sorted(os.sched_getaffinity(0)),
        )
        self.seed = spec.seed
        torch.manual_seed(self.seed + self.rank)
        np.random.seed(self.seed % 2**32)  # numpy takes 32-bit seeds; ours are 64-bit
        self.out_dir = Path(spec.output_dir)
        workers, cache = spec.num_workers, spec.cache_bytes
        self.train_set = Split(spec.train_db, cache_bytes=cache, workers=workers)
        self.val_set = Split(spec.val_db, cache_bytes=cache, workers=workers) if spec.val_db else None
        if len(self.train_set) == 0:
            raise TrainingError("The dataset's training split is empty.")
        # Segmentation: the label images, record i the label of image i.
        self.segmentation = spec.task == "segmentation"
        self.train_labels = self.val_labels = None
        if self.segmentation:
            self.train_labels = Split(spec.train_labels_db, cache_bytes=cache, workers=workers)
            if self.val_set is not None and spec.val_labels_db:
                self.val_labels = Split(spec.val_labels_db, cache_bytes=cache, workers=workers)
            if len(self.train_labels) != len(self.train_set):
                raise TrainingError("The dataset's label images do not match its images; build the dataset again.")
        # Detection: each image's boxes.
        self.detection = spec.task == "detection"
        self.train_objects = self.val_objects = None
        if self.detection:
            self.train_objects = Objects(spec.train_objects)
            if self.val_set is not None and spec.val_objects:
                self.val_objects = Objects(spec.val_objects)
            if len(self.train_objects) != len(self.train_set):
                raise TrainingError("The dataset's boxes do not match its images; build the dataset again.")
        if self.device.type == "cuda":
            # Up to a quarter of the GPU's memory may hold the dataset itself.
            budget = torch.cuda.get_device_properties(self.device).total_memory // 4
            for split in (self.train_set, self.val_set, self.train_labels, self.val_labels):
                if split is not None and split.move_to(self.device, budget):
                    assert split.images is not None  # moved: it is in memory
                    budget -= split.images.numel()
                    log.info("%s is held in GPU memory", split.path.name)
        mean = np.load(spec.mean_path) if spec.mean_path and Path(spec.mean_path).exists() else None
        self.transform_spec = TransformSpec.from_spec(spec)
        channels, height, width = spec.input_shape
        if self.transform_spec.crop_size and self.transform_spec.crop_size > min(height, width):
            raise TrainingError(
                f"The crop size {self.transform_spec.crop_size} is larger than the images ({width}x{height}); "
                "use a smaller crop or a dataset with larger images."
            )
        self.transform = BatchTransform(self.transform_spec, mean, self.device, seed=(self.seed * 7919 + self.rank) % 2**63)
        self.input_shape = self.transform_spec.output_shape(channels, height, width)
        self.num_classes = spec.num_classes
        self.batch_size = rank_batch_size(spec, self.world_size)
        self.plan = Plan.make(spec, len(self.train_set), self.world_size)
        self.net = self._build_network()
        self.bare = self.net
        if self.world_size > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        # Segmentation: per-pixel cross-entropy, the pixels labelled "ignore" left out.
        self.criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX) if self.segmentation else nn.CrossEntropyLoss()
        self.optimizer = make_optimizer(spec, self.net.parameters())
        self.schedule = LrSchedule.from_spec(spec)
        plan = self.plan
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda i: self.schedule.learning_rate(i, plan.total_iterations, plan.iterations_per_epoch) / self.schedule.base_lr,
        )
        self.autocast_dtype = self._precision()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot")
        self._writing: Future | None = None
        self.iteration = 0
        self.best_val_loss = math.inf
        self.bad_validations = 0
        if spec.resume_from:
            self._resume(spec.resume_from)

    # -- setup -------------------------------------------------------------------------

    def notice(self, message: str) -> None:
        log.info(message)
        if self.report:
            emit(protocol.Notice(message=message))

    def _build_network(self) -> nn.Module:
        spec = self.spec
        try:
            net = build_network(spec.network, spec.custom_code, self.input_shape, self.num_classes)
        except NetworkCodeError as exc:
            raise TrainingError(str(exc)) from exc
        except ValueError as exc:
            raise TrainingError(f"{exc} Pick a network made for this image size, or set a crop size.") from exc
        if spec.pretrained and not spec.resume_from:
            fresh = load_pretrained(net, spec.pretrained)
            if fresh:
                self.notice(
                    f"Fine-tuning from {spec.pretrained_label}: these layers did not match the "
                    f"new {self.num_classes}-class network and were re-initialised: {', '.join(fresh)}."
                )
            else:
                self.notice(f"Fine-tuning from {spec.pretrained_label}: every layer was loaded.")
        return net.to(self.device)

    def _precision(self) -> torch.dtype | None:
        wanted = self.spec.precision
        if wanted == "fp32":
            return None
        if self.device.type != "cuda":
            self.notice(f"Mixed precision ({wanted}) needs a GPU: this run trains in fp32 on the CPU.")
            return None
        return torch.bfloat16 if wanted == "bf16" else torch.float16

    def _resume(self, path: str) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if "scheduler" not in state:
            raise TrainingError(
                "This snapshot was saved by an older version without the optimizer state, so it cannot be resumed; "
                "clone the model, or fine-tune from this snapshot."
            )
        self.bare.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.last_snapshot_epoch = float(state.get("epoch", 0))
        self.best_val_loss = float(state.get("best_val_loss", math.inf))
        self.bad_validations = int(state.get("bad_validations", 0))
        torch.set_rng_state(state["torch_rng"])
        self.transform.generator.set_state(state["augment_rng"])
        self.notice(f"Resumed from the snapshot at epoch {self.plan.epoch_of(self.iteration):g} (iteration {self.iteration}).")

    # -- the loop ----------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.autocast_dtype)

    def _epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        order = shard(epoch_order(len(self.train_set), self.seed, epoch), self.rank, self.world_size)
        batches = chunk(order, self.batch_size)
        if self.spec.task != "classification" and len(batches) > 1 and len(batches[-1]) == 1:
            # A last batch of one image joins the one before: the pooled branches of
            # DeepLabV3 and SSDlite normalise 1x1 maps, which needs two images.
            batches[-2:] = [torch.cat(batches[-2:])]
        return batches

    def record(self) -> dict[str, Any]:
        """What this run needs to be reproduced: the versions it ran with, its devices, its
        seed and the fully resolved spec (every default written out)."""
        import platform
        import socket

        import torchvision

        cuda = self.device.type == "cuda"
        return {
            "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "cuda": torch.version.cuda if cuda else None,
            "cudnn": torch.backends.cudnn.version() if cuda and torch.backends.cudnn.is_available() else None,
            "platform": platform.platform(), "host": socket.gethostname(),
            "device": torch.cuda.get_device_name(self.device) if cuda
            else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)",
            "world_size": self.world_size, "backend": dist.get_backend() if self.world_size > 1 else None,
            "precision": str(self.autocast_dtype).replace("torch.", "") if self.autocast_dtype else "float32",
            "seed": self.spec.seed, "resumed_from_iteration": self.iteration or None,
            "spec": {k: v for k, v in self.spec.to_dict().items() if k != "provenance"},
            **self.spec.provenance,
        }

    def run(self) -> None:
        plan = self.plan
        start_iteration = self.iteration
        if self.report:
            emit(protocol.Record(data=self.record()))
        started = last_report = time.monotonic()
        startup_seconds = time.time() - psutil.Process().create_time()
        self.validation_seconds = self.snapshot_seconds = 0.0
        images_since = images_total = 0
        # (iteration, loss on device, lr); with N ranks the loss is summed over them by an
        # all-reduce started at each step and waited for only when reporting.
        pending: list[tuple[int, torch.Tensor, float, Any]] = []
        stop = False
        while self.iteration < plan.total_iterations and not stop:
            epoch = self.iteration // plan.iterations_per_epoch
            batches = self._epoch_batches(epoch)
            first_step = self.iteration - epoch * plan.iterations_per_epoch
            used = batches[first_step * plan.accumulation :]
            steps = [used[i : i + plan.accumulation] for i in range(0, len(used), plan.accumulation)]
            stream = self._batches(self.train_set, self.train_labels, used)
            index_stream = iter(used)
            self.net.train()
            for group in steps:
                if self.iteration >= plan.total_iterations:
                    break
                group_size = sum(len(idx) for idx in group)
                # The group's loss, on the device. Without accumulation, the step's own loss
                # as it is: no extra tensor operations per step (each costs ~10 us of
                # dispatch, 1 % of a LeNet step on a CPU).
                loss_sum: torch.Tensor | None = None
                for j, _ in enumerate(group):
                    images, targets = next(stream)
                    indices = next(index_stream)
                    # DDP: only the last batch of an accumulation group all-reduces gradients.
                    sync = j == len(group) - 1 or self.world_size == 1
                    ctx = cast(nn.parallel.DistributedDataParallel, self.net).no_sync() if not sync else contextlib.nullcontext()
                    if self.detection:  # torchvision's detectors compute their own losses
                        assert self.train_objects is not None
                        x, boxes = self.transform.train_boxes(images, self.train_objects.batch(indices))
                        with ctx, self._autocast():
                            loss = sum(self.net(list(x), boxes).values())
                            if len(group) > 1:
                                loss = loss * (len(boxes) / group_size)
                        self.scaler.scale(loss).backward()
                        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
                        images_since += len(boxes)
                        images_total += len(boxes)
                        continue
                    if self.segmentation:  # the label images move with their images
                        x, targets = self.transform.train_pair(images, targets)
                    else:
                        targets = targets.to(self.device, non_blocking=True)
                        x = self.transform.train(images)
                    with ctx, self._autocast():
                        loss = self.criterion(self.net(x), targets)
                        if len(group) > 1:  # weighted: k accumulated batches give the gradient of one k-times batch
                            loss = loss * (len(targets) / group_size)
                    self.scaler.scale(loss).backward()
                    loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
                    images_since += len(targets)
                    images_total += len(targets)
                lr = self.optimizer.param_groups[0]["lr"]
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                self.iteration += 1
                assert loss_sum is not None  # a group has a batch at least
                if self.world_size > 1:  # reduced in place: not the step's own loss (autograd's output)
                    loss_sum = loss_sum.clone()
                work = dist.all_reduce(loss_sum, async_op=True) if self.world_size > 1 else None
                pending.append((self.iteration, loss_sum, lr, work))
                now = time.monotonic()
                boundary = self.iteration % plan.val_every == 0 or self.iteration % plan.snapshot_every == 0
                if now - last_report >= REPORT_SECONDS or boundary or self.iteration == plan.total_iterations:
                    self._flush(pending, images_since * self.world_size / max(now - last_report, 1e-9))
                    self._progress(start_iteration, started, now)
                    pending, images_since, last_report = [], 0, now
                paused = time.monotonic()
                stop = self._maybe_validate_and_snapshot()
                if not stop and self.iteration < plan.total_iterations and self._stop_agreed():
                    if pending:  # the points since the last report go with it
                        now = time.monotonic()
                        self._flush(pending, images_since * self.world_size / max(now - last_report, 1e-9))
                        pending, images_since, last_report = [], 0, now
                    self._stop_gracefully()
                    stop = True
                # The throughput window measures training only, not validation or snapshots.
                last_report += time.monotonic() - paused
                if stop:
                    break
        # Training's time ends at its last step: the wait for the last snapshot's file is
        # the job's end (in its end-to-end time), not its steady state.
        loop = time.monotonic() - started
        self.wait_for_snapshots()
        emit(protocol.Finished(iteration=self.iteration))  # every rank: see the event's comment
        if self.report:
            train_seconds = loop - self.validation_seconds
            seen = images_total * self.world_size
            emit(protocol.Summary(
                startup_seconds=round(startup_seconds, 3),
                train_seconds=round(train_seconds, 3),
                validation_seconds=round(self.validation_seconds, 3),
                snapshot_seconds=round(self.snapshot_seconds, 3),
                images=seen,
                images_per_second=round(seen / train_seconds, 1) if train_seconds > 0 else None,
            ))
        if self.world_size > 1:
            # Together: a rank that tore its group down while another still used it made
            # that one abort in gloo's threads at exit.
            try:
                dist.barrier()
            except (RuntimeError, dist.DistError) as exc:
                log.warning("the other ranks left before the last barrier (%s); nothing is lost", exc)
            dist.destroy_process_group()

    def _flush(self, pending: list[tuple[int, torch.Tensor, float, Any]], throughput: float) -> None:
        if not pending:
            return
        for *_, work in pending:
            if work is not None:
                work.wait()
        # The one device sync; every rank sees the same (mean) losses.
        losses = (torch.stack([p[1] for p in pending]).float() / self.world_size).tolist()
        first = getattr(self, "_first_loss", None)
        if first is None:
            self._first_loss = first = losses[0]
        good = len(losses)
        for n, loss in enumerate(losses):
            if not math.isfinite(loss) or loss > max(EXPLODED_LOSS, 1000 * abs(first)):
                good = n
                break
        # The points before a divergence are kept (charted on the failed run's page).
        if self.report and good:
            emit(protocol.TrainRows(rows=[
                [iteration, round(self.plan.epoch_of(iteration), 6), {"train_loss": loss, "lr": lr}]
                for (iteration, _, lr, _), loss in zip(pending[:good], losses[:good])
            ], t=time.time()))
        if good < len(losses):
            iteration, _, lr, _ = pending[good]
            loss = losses[good]
            what = "NaN" if math.isnan(loss) else "infinite" if math.isinf(loss) else f"{loss:.4g} (it started at {first:.4g})"
            snapshot = f"The last snapshot (epoch {self.last_snapshot_epoch:g}) is kept: resume from it, or clone with a lower learning rate." \
                if self.last_snapshot_epoch is not None else "No snapshot was made before it."
            raise TrainingError(
                f"Loss became {what} at epoch {self.plan.epoch_of(iteration):.2f} (iteration {iteration}, learning rate {lr:.4g}): "
                f"training diverged. Try decreasing the learning rate (or add warm-up epochs). {snapshot}"
            )
        self.last_loss, self.last_lr, self.last_throughput = losses[-1], pending[-1][2], throughput
        if not self.report:
            return
        last = pending[-1][0]
        emit(protocol.Metrics(iteration=last, epoch=round(self.plan.epoch_of(last), 6), values={"throughput": throughput},
                              t=time.time()))

    def _progress(self, start_iteration: int, started: float, now: float) -> None:
        plan = self.plan
        if self.devices.due():  # every rank its own device, every few seconds: charted beside the metrics
            emit(protocol.Telemetry(values={**self.devices.read(), "rank": self.rank, "iteration": self.iteration,
                                            "epoch": round(plan.epoch_of(self.iteration), 6)}))
        if not self.report:
            return
        done = self.iteration - start_iteration
        per_iteration = (now - started) / done if done else None
        next_snapshot = (self.iteration // plan.snapshot_every + 1) * plan.snapshot_every
        next_snapshot = min(next_snapshot, plan.total_iterations)
        self.eta = per_iteration * (plan.total_iterations - self.iteration) if per_iteration else None

        emit(protocol.Progress(
            progress=self.iteration / plan.total_iterations,
            eta=per_iteration * (plan.total_iterations - self.iteration) if per_iteration else None,
            next_snapshot_eta=per_iteration * (next_snapshot - self.iteration) if per_iteration else None,
        ))

    def _maybe_validate_and_snapshot(self) -> bool:
        """Validate and snapshot at their intervals (and at the end). True: stop early."""
        plan, it = self.plan, self.iteration
        last = it == plan.total_iterations
        metrics: dict[str, float] = {}
        stop = False
        val_due = it % plan.val_every == 0 or last
        # Every snapshot is validated too, so each one in the list has its own figures.
        snapshot_due = it % plan.snapshot_every == 0 or last
        if (val_due or snapshot_due) and self.val_set is not None and len(self.val_set):
            began = time.monotonic()
            metrics = self.evaluate()
            self.validation_seconds += time.monotonic() - began
            if self.report:
                emit(protocol.Metrics(iteration=it, epoch=round(plan.epoch_of(it), 6), values=metrics, t=time.time()))
                self._log_validation(it, metrics)
        if val_due and metrics:  # early stopping counts the scheduled validations only
            patience = self.spec.early_stopping_patience
            if metrics["val_loss"] < self.best_val_loss:
                self.best_val_loss, self.bad_validations = metrics["val_loss"], 0
            else:
                self.bad_validations += 1
                if patience and self.bad_validations >= int(patience):
                    stop = True
                    self.notice(
                        f"Early stopping at epoch {plan.epoch_of(it):.2f}: the validation loss has not improved on "
                        f"{self.best_val_loss:.4f} for {self.bad_validations} validations."
                    )
        if it % plan.snapshot_every == 0 or last or stop:
            began = time.monotonic()
            self.snapshot(metrics)
            self.snapshot_seconds += time.monotonic() - began
        return stop

    def _stop_agreed(self) -> bool:
        """Has the worker asked this run to stop (a time limit, a preemption)? With several
        ranks they must stop at the same step: every STOP_CHECK_EVERY steps they agree
        (any rank asked: all stop), a one-number all-reduce."""
        if self.world_size == 1:
            return STOP_ASKED.is_set()
        if self.iteration % STOP_CHECK_EVERY:
            return False
        flag = torch.tensor([1.0 if STOP_ASKED.is_set() else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def _stop_gracefully(self) -> None:
        """Snapshot here (unless this step just made one), wait until it is on disk, and
        say so: the job resumes from exactly this step, losing nothing."""
        it = self.iteration
        if self.last_snapshot_iteration != it:
            self.snapshot({})
        self.wait_for_snapshots()
        epoch = round(self.plan.epoch_of(it), 4)
        log.info("stopping at iteration %d (epoch %.2f) as the worker asked; the snapshot there is kept", it, epoch)
        emit(protocol.Stopped(iteration=it, epoch=epoch))  # every rank: each one's worker must know it stopped early

    def _log_validation(self, iteration: int, metrics: dict[str, float]) -> None:
        """One line per validation in job.log, as torchvision's MetricLogger prints it."""
        plan = self.plan
        eta = getattr(self, "eta", None)
        log.info(
            "epoch %.2f/%g  iteration %d/%d  train loss %s  val loss %.4f  val accuracy %.2f%%%s  lr %.4g  %s images/s  ETA %s",
            plan.epoch_of(iteration), self.spec.epochs, iteration, plan.total_iterations,
            f"{self.last_loss:.4f}" if self.last_loss is not None else "-", metrics["val_loss"], 100 * metrics["val_accuracy"],
            f"  mean IoU {100 * metrics['val_miou']:.2f}%" if "val_miou" in metrics else
            f"  mAP@0.5 {100 * metrics['val_map50']:.2f}%  mAP@0.5:0.95 {100 * metrics['val_map']:.2f}%" if "val_map" in metrics else "",
            self.last_lr if self.last_lr is not None else self.optimizer.param_groups[0]["lr"],
            f"{self.last_throughput:.0f}" if self.last_throughput is not None else "-",
            f"{eta:.0f}s" if eta is not None else "-",
        )

    @staticmethod
    def _batches(split: Split, labels: Split | None, index_batches: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, targets) per batch: class ids, or (segmentation) the label images."""
        if labels is None:
            yield from split.batches(index_batches)
            return
        for (images, _), (label_images, _) in zip(split.batches(index_batches), labels.batches(index_batches)):
            yield images, label_images[:, 0]

    @torch.no_grad()
    def evaluate_segmentation(self) -> dict[str, float]:
        """Loss per labelled pixel, pixel accuracy, and the intersection over union of each
        class (and their mean over the classes present) from one confusion matrix of the
        whole validation split (summed over the ranks)."""
        assert self.val_set is not None and self.val_labels is not None
        self.net.eval()
        classes = self.num_classes
        order = shard(torch.arange(len(self.val_set)), self.rank, self.world_size)
        confusion = torch.zeros(classes * classes, dtype=torch.int64, device=self.device)
        loss_sum = 0.0
        for images, label_images in self._batches(self.val_set, self.val_labels, chunk(order, self.batch_size)):
            y = self.transform.eval_labels(label_images)
            with self._autocast():
                output = self.net(self.transform.eval(images)).float()
            loss_sum += F.cross_entropy(output, y, ignore_index=IGNORE_INDEX, reduction="sum").item()
            valid = y != IGNORE_INDEX
            confusion += torch.bincount(y[valid] * classes + output.argmax(1)[valid], minlength=classes * classes)
        if self.world_size > 1:
            dist.all_reduce(confusion)
        (loss_sum,) = reduce_sum([loss_sum], self.device, self.world_size)
        self.net.train()
        summary = segmentation_summary(confusion.view(classes, classes).cpu().numpy())
        metrics = {
            "val_loss": loss_sum / max(float(sum(summary["pixels"])), 1.0),
            # What the best snapshot, the star and sweeps go by: the mean IoU.
            "val_accuracy": summary["miou"],
            "val_miou": summary["miou"],
            "val_pixel_accuracy": summary["pixel_accuracy"],
        }
        metrics.update({f"val_iou/{i}": v for i, v in enumerate(summary["iou"]) if v is not None})
        return metrics

    @torch.no_grad()
    def evaluate_detection(self) -> dict[str, float]:
        """mAP over IoU 0.5:0.95 and at 0.5, overall and per class (COCO's evaluation,
        through torchmetrics), and the loss (the detector's own, in training mode with its
        normalisation layers frozen). Every rank evaluates the whole split, so they all
        agree without gathering variable-length detections."""
        from torchmetrics.detection import MeanAveragePrecision

        assert self.val_set is not None and self.val_objects is not None
        net = self.bare
        coco = MeanAveragePrecision(iou_type="bbox", class_metrics=True)
        at_half = MeanAveragePrecision(iou_type="bbox", iou_thresholds=[0.5], class_metrics=True)
        loss_sum = count = 0.0
        batches = chunk(torch.arange(len(self.val_set)), self.batch_size)
        for indices, (images, _) in zip(batches, self.val_set.batches(batches)):
            x = self.transform.eval(images)
            truth = [{"boxes": b.to(self.device), "labels": c.to(self.device)} for b, c in self.val_objects.batch(indices)]
            net.train()
            for module in net.modules():  # the loss without touching running statistics
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
            with self._autocast():
                loss_sum += float(sum(net(list(x), truth).values())) * len(truth)
            net.eval()
            with self._autocast():
                found = net(list(x))
            found = [{k: v.float() if k != "labels" else v for k, v in d.items()} for d in found]
            coco.update(found, truth)
            at_half.update(found, truth)
            count += len(truth)
        self.net.train()
        overall, half = coco.compute(), at_half.compute()
        metrics = {
            "val_loss": loss_sum / max(count, 1.0),
            "val_accuracy": float(overall["map_50"]),  # what "best" and sweeps go by: mAP@0.5
            "val_map50": float(overall["map_50"]),
            "val_map": float(overall["map"]),
        }
        classes = overall["classes"].reshape(-1).tolist()
        for name, result in (("val_ap", overall), ("val_ap50", half)):
            for label, value in zip(classes, result["map_per_class"].reshape(-1).tolist()):
                if value >= 0:  # -1: a class with no object in the split
                    metrics[f"{name}/{int(label) - 1}"] = float(value)
        metrics = {k: (0.0 if not math.isfinite(v) or v < 0 else v) if k != "val_loss" else v for k, v in metrics.items()}
        if self.world_size > 1:
            # The loss pass samples (Faster R-CNN's proposals) with each rank's own seed:
            # every rank takes rank 0's figures, so that they all decide alike (early stopping).
            shared = [metrics]
            dist.broadcast_object_list(shared, src=0)
            metrics = shared[0]
        return metrics

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        assert self.val_set is not None
        if self.segmentation:
            return self.evaluate_segmentation()
        if self.detection:
            return self.evaluate_detection()
        self.net.eval()
        order = shard(torch.arange(len(self.val_set)), self.rank, self.world_size)
        loss_sum = correct1 = correct5 = count = 0.0
        for images, targets in self.val_set.batches(chunk(order, self.batch_size)):
            targets = targets.to(self.device)
            with self._autocast():
                output = self.net(self.transform.eval(images)).float()
            loss_sum += self.criterion(output, targets).item() * targets.size(0)
            top = output.topk(min(5, output.size(1)), dim=1).indices
            hits = top.eq(targets[:, None])
            correct1 += hits[:, 0].sum().item()
            correct5 += hits.any(dim=1).sum().item()
            count += targets.size(0)
        loss_sum, correct1, correct5, count = reduce_sum([loss_sum, correct1, correct5, count], self.device, self.world_size)
        count = max(count, 1.0)
        self.net.train()
        return {"val_loss": loss_sum / count, "val_accuracy": correct1 / count, "val_top5": correct5 / count}

    def snapshot(self, metrics: dict[str, float]) -> None:
        if not self.report:
            return
        spec, it = self.spec, self.iteration
        filename = f"snapshot_iter_{it}.pt"
        epoch = round(self.plan.epoch_of(it), 4)
        self.last_snapshot_epoch = epoch
        self.last_snapshot_iteration = it
        # Training goes on while the snapshot is written: a private CPU copy of the state
        # is taken now, and a background thread serialises it. The event is sent once
        # the file is in place, so a snapshot that is listed always exists.
        state = cpu_copy(
            {
                "model": self.bare.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "iteration": it,
                "epoch": epoch,
                "best_val_loss": self.best_val_loss,
                "bad_validations": self.bad_validations,
                "torch_rng": torch.get_rng_state(),
                "augment_rng": self.transform.generator.get_state(),
                "network": spec.network,
                "task": spec.task,
                "num_classes": self.num_classes,
                "input_shape": list(self.input_shape),
                "crop_size": self.transform_spec.crop_size,
                "mean_subtraction": self.transform_spec.mean_subtraction,
            }
        )
        event = protocol.Snapshot(
            epoch=epoch, iteration=it, filename=filename,
            val_loss=metrics.get("val_loss"), val_accuracy=metrics.get("val_accuracy"), val_top5=metrics.get("val_top5"),
        )

        def write() -> None:
            try:
                save_checkpoint(self.out_dir / filename, state)
            except OSError as exc:
                raise TrainingError(
                    f"Could not write the snapshot at epoch {epoch:g} ({exc.strerror or exc}). The disk may be full: "
                    "free some space, then resume the model from its last snapshot."
                ) from exc
            emit(event)

        self.wait_for_snapshots()  # one at a time: memory stays bounded, files stay in order
        self._writing = self._writer.submit(write)

    def wait_for_snapshots(self) -> None:
        """Block until the snapshot being written is on disk (re-raising its error)."""
        if self._writing is not None:
            self._writing.result()
            self._writing = None


def main(spec: TrainSpec | dict[str, Any]) -> None:
    if isinstance(spec, dict):
        spec = TrainSpec.from_dict(spec)
    trainer = None
    try:
        trainer = Trainer(spec)
        trainer.run()
    except (TrainingError, torch.OutOfMemoryError, MemoryError):
        raise
    except Exception as exc:
        if spec.network == "custom" and user_line(exc):
            raise TrainingError(str(describe_code_error(exc, "Your network failed during training"))) from exc
        raise
    finally:
        if trainer is not None:
            trainer.wait_for_snapshots()  # what was written before a failure is kept


def out_of_memory_message(spec: TrainSpec) -> str:
    batch = spec.batch_size
    half = max(1, batch // 2)
    return (
        f"Out of memory with batch size {batch}. Try a smaller batch size ({half}), or keep the effective batch with "
        f"batch size {half} and batch accumulation {2 * spec.batch_accumulation}."
    )


# Set by SIGUSR1 (protocol.STOP_SIGNAL): the worker asks for a graceful stop.
STOP_ASKED = threading.Event()
# With several ranks, how often (in steps) they check together whether to stop.
STOP_CHECK_EVERY = 10


def _on_stop_signal(signum: int, frame: object) -> None:
    STOP_ASKED.set()


def cli(argv: list[str] | None = None) -> int:
    # First of all: SIGUSR1's default action would kill the process.
    signal.signal(getattr(signal, protocol.STOP_SIGNAL), _on_stop_signal)
    parser = argparse.ArgumentParser(description="Train an image classifier from a job spec.")
    parser.add_argument("--spec", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    try:
        spec = TrainSpec.from_dict(json.loads(args.spec.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        emit(protocol.Error(message=f"The job spec {args.spec} cannot be read: {exc}"))
        return 1
    try:
        main(spec)
    except TrainingError as exc:
        # The log keeps the message, and the traceback of what caused it (custom code).
        log.error("%s", exc, exc_info=exc.__cause__ is not None)
        emit(protocol.Error(message=str(exc)))
        return 1
    except (torch.OutOfMemoryError, MemoryError):
        log.exception(out_of_memory_message(spec))
        emit(protocol.Error(message=out_of_memory_message(spec)))
        return 1
    except (RuntimeError, dist.DistError) as exc:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and _is_peer_failure(exc):
            # Not this rank's fault: another rank died or hung. The worker requeues the job.
            log.error("lost contact with the other ranks: %s", exc)
            emit(protocol.Error(message=f"Lost contact with the other ranks: {str(exc)[:300]}", peer_lost=True))
            return 1
        raise
    return 0


def _is_peer_failure(exc: BaseException) -> bool:
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return any(
        marker in text
        for marker in ("connection closed by peer", "connection reset", "timed out", "timeout", "gloo", "nccl", "broken pipe")
    )


def process_setup() -> None:
    """The training process's CPU settings, made once at its entry (not at import, nor in
    `cli`, which tests call in their own process: this is process-wide state).

    Tiny gradients and momentum terms become denormal floats, which x86 CPUs handle many
    times slower: flushing them to zero measured up to 20 % faster on LeNet. It must be set
    before any torch operation starts the CPU thread pool: pool threads copy the flag when
    they are created. And a CPU device's share of the cores, also when forked from a
    zygote (whose OpenMP read the variable before this job's environment was set)."""
    torch.set_flush_denormal(True)
    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


if __name__ == "__main__":
    process_setup()
    sys.exit(cli())
