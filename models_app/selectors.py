"""Reads for models."""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.db.models import QuerySet

from .models import Metric, TrainedModel


def model_list() -> QuerySet[TrainedModel]:
    return TrainedModel.objects.select_related("job", "job__owner", "dataset", "dataset__job").order_by("-job__created_at")


def model_metrics(model: TrainedModel, *, after_iteration: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """Chart series: {name: [{"iteration", "epoch", "value"}, ...]} in iteration order."""
    rows = Metric.objects.filter(model=model)
    if after_iteration is not None:
        rows = rows.filter(iteration__gt=after_iteration)
    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for name, iteration, epoch, value in rows.order_by("iteration", "id").values_list("name", "iteration", "epoch", "value"):
        series[name].append({"iteration": iteration, "epoch": epoch, "value": value})
    return dict(series)
