"""Runs side by side: the compare page and its API (the curves come from each model's
downsampled metrics; this gives the runs' summaries and the parameter table)."""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.utils import timezone

from workers.permissions import AnyUser, visible_q
from workers.errors import JobError
from workers.models import Allocation

from .models import TrainedModel
from .selectors import model_list
from .services import PARAM_FIELDS

MAX_RUNS = 20
# Shown first, in this order; the rest of PARAM_FIELDS follow.
LEADING = ("dataset", "network", "epochs", "batch_size", "solver", "learning_rate", "lr_policy", "momentum", "weight_decay")


def parse_ids(raw: str) -> list[int]:
    ids = list(dict.fromkeys(int(part) for part in raw.replace(" ", "").split(",") if part.isdecimal()))
    if len(ids) < 2:
        raise JobError("Choose at least two models to compare (?ids=1,2).", field="ids")
    if len(ids) > MAX_RUNS:
        raise JobError(f"Compare at most {MAX_RUNS} models at once.", field="ids")
    return ids


def device_hours(job_ids: list[int]) -> dict[int, float]:
    """Device time each job held (every rank, every attempt), in hours."""
    now = timezone.now()
    hours: dict[int, float] = defaultdict(float)
    rows = Allocation.objects.filter(job_id__in=job_ids).values_list("job_id", "allocated_at", "started_at", "released_at")
    for job_id, allocated, started, released in rows:
        hours[job_id] += ((released or now) - (started or allocated)).total_seconds() / 3600
    return hours


def _display(model: TrainedModel, field: str) -> str:
    if field == "dataset":
        return model.dataset.job.name
    value = getattr(model, field)
    if field == "custom_code":
        return f"{len(value.splitlines())} lines" if value else ""
    if field == "base_model":
        return model.base_model.job.name if model.base_model_id and model.base_model else ""
    display = getattr(model, f"get_{field}_display", None)
    if display is not None and value not in (None, ""):
        return str(display())
    if isinstance(value, float):
        return f"{value:g}"
    return "" if value is None else str(value)


def model_compare(ids: list[int], user: AnyUser | None = None) -> dict[str, Any]:
    """The runs side by side; with `user`, only those they may see (the others: "No model")."""
    rows = model_list() if user is None else model_list().filter(visible_q(user, "job__"))
    models = {m.pk: m for m in rows.select_related("base_model__job").filter(pk__in=ids)}
    missing = [i for i in ids if i not in models]
    if missing:
        raise JobError(f"No model {', '.join(map(str, missing))}.", field="ids")
    ordered = [models[i] for i in ids]
    hours = device_hours(ids)
    runs = [
        {
            "id": m.pk, "name": m.job.name, "owner": m.job.owner.username, "status": m.job.status,
            "best_val_accuracy": m.best_val_accuracy, "best_epoch": m.best_epoch,
            "duration_seconds": m.job.duration_seconds, "device_hours": round(hours.get(m.pk, 0.0), 4),
        }
        for m in ordered
    ]
    fields = [*LEADING, *[f for f in PARAM_FIELDS if f not in LEADING]]
    params = []
    for field in fields:
        values = [_display(m, field) for m in ordered]
        if field in ("custom_code", "base_model", "base_epoch") and not any(values):
            continue
        label = "dataset" if field == "dataset" else str(getattr(TrainedModel._meta.get_field(field), "verbose_name", field))
        params.append({"field": field, "label": label, "values": values, "differs": len(set(values)) > 1})
    return {"runs": runs, "params": params}
