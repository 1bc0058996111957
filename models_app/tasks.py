"""The model domain's inference tasks, answered by an inference worker (workers/inference.py)
and never by the web process: they import torch, and keep recently used snapshots loaded."""
from __future__ import annotations

import base64
import logging
import os
from typing import Any

from celery import shared_task

from workers import storage
from workers.errors import JobError

log = logging.getLogger(__name__)
_threads_set = False


def _limit_threads() -> None:
    """Once per worker process: torch's threads for one request at a time, so inference
    does not take every core from the training jobs beside it."""
    global _threads_set
    if not _threads_set:
        import torch
        from django.conf import settings

        torch.set_num_threads(max(1, settings.INFERENCE_THREADS or (os.cpu_count() or 1)))
        _threads_set = True


@shared_task(name="models_app.classify_one", ignore_result=False, acks_late=False)
def classify_one_task(model_id: int, epoch: float | None, image: str, views: bool = False) -> dict[str, Any]:
    """Classify one base64-encoded image with the snapshot of `epoch` (None: the latest)."""
    from .inference import classify
    from .models import TrainedModel
    from .services import snapshot_for

    _limit_threads()
    model = TrainedModel.objects.select_related("dataset", "job").filter(pk=model_id).first()
    if model is None:
        return {"ok": False, "error": "This model was deleted."}
    try:
        snapshot = snapshot_for(model, epoch, field="epoch")
        reply = classify(model, snapshot, base64.b64decode(image), views=views)
    except JobError as exc:
        return {"ok": False, "error": str(exc), "field": exc.field}
    except ValueError as exc:
        return {"ok": False, "error": f"Could not classify this file: {exc}", "field": "image"}
    return {"ok": True, "epoch": snapshot.epoch, **reply}


@shared_task(name="models_app.weights_file", ignore_result=False, acks_late=False)
def weights_file_task(model_id: int, epoch: float) -> dict[str, Any]:
    """The snapshot's weights alone (no optimizer state), written once beside the model for
    the archive a download builds, so the web process never loads torch."""
    import torch

    from .models import TrainedModel
    from .services import snapshot_for

    model = TrainedModel.objects.select_related("job").filter(pk=model_id).first()
    if model is None:
        return {"ok": False, "error": "This model was deleted."}
    try:
        snapshot = snapshot_for(model, epoch, field="epoch")
    except JobError as exc:
        return {"ok": False, "error": str(exc), "field": exc.field}
    storage.fetch(snapshot.path)  # from the artifact store, when this host has not got it
    target = model.directory / "weights" / snapshot.filename
    if not target.exists() or target.stat().st_mtime < snapshot.path.stat().st_mtime:
        checkpoint = torch.load(snapshot.path, map_location="cpu", weights_only=True)
        target.parent.mkdir(exist_ok=True)
        partial = target.with_name(target.name + f".{os.getpid()}.tmp")
        torch.save(checkpoint.get("model", checkpoint), partial)
        os.replace(partial, target)
    storage.publish(target)  # the web process reads it, maybe on another host (sent once)
    # Where it is in the model's folder: the web process may be on another host, its job
    # folders elsewhere (it fetches the file from the artifact store).
    return {"ok": True, "path": str(target), "relative": str(target.relative_to(model.directory)), "torch": torch.__version__}
