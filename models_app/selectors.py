"""Reads for models."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from django.db.models import Count, ExpressionWrapper, F, IntegerField, Max, Min, QuerySet

from .models import Metric, TrainedModel


def model_list() -> QuerySet[TrainedModel]:
    return TrainedModel.objects.select_related("job", "job__owner", "dataset", "dataset__job").order_by("-job__created_at")


# A chart draws at most this many points per series: what a screen shows, whatever the
# length of the run (a 500,000-iteration run would otherwise send 65 MB to a page).
MAX_POINTS = 2000
FIELDS = ("iteration", "epoch", "value")


def model_metrics(
    model: TrainedModel, *, after_iteration: int | None = None, max_points: int | None = MAX_POINTS
) -> dict[str, list[dict[str, Any]]]:
    """Chart series: {name: [{"iteration", "epoch", "value"}, ...]} in iteration order.

    A series longer than `max_points` comes downsampled in the database: the iterations
    are cut into max_points / 2 buckets and each bucket gives its lowest and its highest
    value (min/max per bucket: spikes stay visible); the last point is always there.
    Validation series (one point per validation) always come whole. `max_points=None`:
    every point (the CSV and the paginated endpoint read them in pages instead). Values
    keep 7 significant digits, epochs 5 decimals: what a chart can show, half the bytes."""
    rows = Metric.objects.filter(model=model)
    if after_iteration is not None:
        rows = rows.filter(iteration__gt=after_iteration)
    spans = rows.values("name").annotate(n=Count("id"), lo=Min("iteration"), hi=Max("iteration")).order_by("name")
    series: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        name = span["name"]
        points = rows.filter(name=name)
        values: Iterable[tuple[Any, ...]]
        if max_points is None or span["n"] <= max_points or name.startswith("val_"):
            values = points.order_by("iteration", "id").values_list(*FIELDS)
        else:
            values = _min_max_per_bucket(points, span["lo"], span["hi"], max(1, max_points // 2))
        series[name] = [{"iteration": it, "epoch": round(epoch, 5), "value": _short(value)} for it, epoch, value in values]
    return series


def _short(value: float) -> float:
    return float(f"{value:.7g}")


def _min_max_per_bucket(points: QuerySet[Metric], lo: int, hi: int, buckets: int) -> list[tuple[int, float, float]]:
    """Each bucket's lowest and highest value, drawn as a vertical stroke at the bucket's
    middle (as Chart.js' own min/max decimation draws a pixel column): one aggregate pass
    in the database, no sort; the newest point is added exactly."""
    bucket = ExpressionWrapper((F("iteration") - lo) * buckets / (hi - lo + 1), output_field=IntegerField())
    rows = (
        points.annotate(bucket=bucket).values("bucket")
        .annotate(first=Min("iteration"), last=Max("iteration"), start=Min("epoch"), end=Max("epoch"),
                  low=Min("value"), high=Max("value"))
        .order_by("bucket")
        .values_list("first", "last", "start", "end", "low", "high")
    )
    chosen: list[tuple[int, float, float]] = []
    for first, last, start, end, low, high in rows:
        iteration, epoch = (first + last) // 2, (start + end) / 2
        chosen.append((iteration, epoch, low))
        if high != low:
            chosen.append((iteration, epoch, high))
    newest = points.order_by("-iteration", "-id").values_list(*FIELDS).first()
    if newest is not None:
        chosen = [p for p in chosen if p[0] < newest[0]] + [newest]
    return chosen


def model_metric_points(model: TrainedModel, name: str, *, after: int = -1, limit: int = 10_000) -> list[tuple[int, float, float]]:
    """Every point of one series after iteration `after`, at most `limit` (full resolution,
    a page at a time: the next page starts after the last iteration returned)."""
    rows = Metric.objects.filter(model=model, name=name, iteration__gt=after).order_by("iteration", "id")
    return list(rows.values_list(*FIELDS)[:limit])


def model_metric_rows(model: TrainedModel) -> Iterator[tuple[str, int, float, float]]:
    """Every point of every series, for the CSV (streamed from the database in chunks)."""
    rows = Metric.objects.filter(model=model).order_by("name", "iteration", "id")
    return rows.values_list("name", *FIELDS).iterator(chunk_size=5000)


# Past runs read per estimate: the newest finished ones of the networks asked about.
ESTIMATE_HISTORY = 500


def model_estimate_seconds(model_ids: list[int]) -> dict[int, float]:
    """How long each queued model should train, from the newest finished run of the same
    network: on the same dataset, its seconds per epoch times this model's epochs; else,
    on another dataset, its seconds per training image and epoch. None known: absent.
    (The queue's estimated start times build on this; a guess, and said to be one.)"""
    from workers.models import JobStatus

    queued = list(
        TrainedModel.objects.filter(pk__in=model_ids).values_list("pk", "network", "dataset_id", "epochs", "dataset__counts")
    )
    if not queued:
        return {}
    past = (
        TrainedModel.objects.filter(
            network__in={network for _, network, *_ in queued}, job__status=JobStatus.DONE,
            job__started_at__isnull=False, job__finished_at__isnull=False,
        )
        .order_by("-job__finished_at")
        .values_list("network", "dataset_id", "epochs", "dataset__counts", "job__started_at", "job__finished_at")[:ESTIMATE_HISTORY]
    )
    per_epoch: dict[tuple[str, int], float] = {}
    per_image_epoch: dict[str, float] = {}
    for network, dataset_id, epochs, counts, started, finished in past:
        if started is None or finished is None:  # (filtered on; the columns are nullable)
            continue
        seconds = (finished - started).total_seconds()
        per_epoch.setdefault((network, dataset_id), seconds / max(epochs, 1e-9))
        train = (counts or {}).get("train") or 0
        if train:
            per_image_epoch.setdefault(network, seconds / (max(epochs, 1e-9) * train))
    estimates: dict[int, float] = {}
    for pk, network, dataset_id, epochs, counts in queued:
        train = (counts or {}).get("train") or 0
        if (network, dataset_id) in per_epoch:
            estimates[pk] = per_epoch[network, dataset_id] * epochs
        elif network in per_image_epoch and train:
            estimates[pk] = per_image_epoch[network] * epochs * train
    return estimates
