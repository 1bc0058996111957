"""Lists in the API: one pagination, the filters every job list shares, and the prefetches
that keep a list request at a fixed number of queries whatever its length; and the pick
lists of forms (`pick_list`)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from django.db.models import Model

import django_filters
from django.db.models import DurationField, ExpressionWrapper, F, Prefetch, Q, QuerySet
from django.db.models.functions import Coalesce, Now
from rest_framework.pagination import PageNumberPagination

from .models import Allocation, JobStatus

M = TypeVar("M", bound=Model)


def pick_list(rows: QuerySet[M], limit: int, chosen: Iterable[int | None]) -> tuple[list[M], int]:
    """What a form's dropdown offers of a list too long for one: its first `limit` rows and
    the ones chosen (a link may name an older one), and how many rows it leaves out."""
    offered = list(rows[:limit])
    if len(offered) < limit:  # all of them (the chosen ones among them, if they are rows)
        return offered, 0
    missing = {pk for pk in chosen if pk is not None} - {row.pk for row in offered}
    if missing:
        offered += list(rows.filter(pk__in=missing))
    return offered, rows.count() - len(offered)


class Pagination(PageNumberPagination):
    """`?page=N&page_size=M` (default 50, at most 500): `{"count", "next", "previous", "results"}`."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


def job_prefetches(prefix: str = "") -> list[Any]:
    """What JobSerializer reads for every row (timeline, devices, requested devices), in
    three queries for the whole page. `prefix` leads from the listed model to its Job
    ("job__" for datasets and models)."""
    return [
        f"{prefix}events",
        f"{prefix}requested_devices",
        Prefetch(f"{prefix}allocations", queryset=Allocation.objects.select_related("device").order_by("rank")),
    ]


class StableOrdering(django_filters.OrderingFilter):
    """Ordering by the fields asked for, then by id, so pages never overlap or skip rows;
    an empty or unknown `ordering` keeps the list's default order. Empty values sort last
    both ways (a model without a validation yet is not "the best"). `duration` is the run
    time, computed (a running job's so far)."""

    def __init__(self, *args: Any, prefix: str = "", **kwargs: Any) -> None:
        self.prefix = prefix
        super().__init__(*args, **kwargs)

    def filter(self, qs: QuerySet, value: Any) -> QuerySet:
        fields = [self.get_ordering_value(param) for param in value or [] if param]
        if not fields:
            return qs
        if any(f.lstrip("-") == "duration" for f in fields):
            qs = qs.annotate(duration=ExpressionWrapper(
                Coalesce(F(f"{self.prefix}finished_at"), Now()) - F(f"{self.prefix}started_at"), output_field=DurationField()
            ))
        order = [F(f[1:]).desc(nulls_last=True) if f.startswith("-") else F(f).asc(nulls_last=True) for f in fields]
        return qs.order_by(*order, "-pk")


def job_ordering(prefix: str = "", extra: tuple[tuple[str, str], ...] = ()) -> django_filters.OrderingFilter:
    """`?ordering=created|name|status|duration` and the `extra` (field, parameter) pairs
    (`-` for descending) on the job behind each row."""
    names = ["created", "name", "status", "duration", *[param for _, param in extra]]
    return StableOrdering(
        fields=((f"{prefix}created_at", "created"), (f"{prefix}name", "name"), (f"{prefix}status", "status"),
                ("duration", "duration"), *extra),
        prefix=prefix,
        help_text=f"{', '.join(names)}; prefix with - for descending (default: -created).",
    )


class JobFilterSet(django_filters.FilterSet):
    """Filters of every job list: `owner` (username), `status` (one or more), `group`,
    `search` (in the name). Subclasses set PREFIX, the path from their model to its Job,
    and declare `ordering = job_ordering(PREFIX)`."""

    PREFIX = ""

    owner = django_filters.CharFilter(method="filter_owner", help_text="Username of the owner.")
    status = django_filters.MultipleChoiceFilter(
        choices=JobStatus.choices, method="filter_status", help_text="One or more statuses."
    )
    group = django_filters.CharFilter(method="filter_group", help_text="The job's group (exact).")
    search = django_filters.CharFilter(method="filter_search", help_text="Text in the name or the notes (case-insensitive).")

    def filter_owner(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return queryset.filter(**{f"{self.PREFIX}owner__username": value})

    def filter_status(self, queryset: QuerySet, name: str, value: list[str]) -> QuerySet:
        return queryset.filter(**{f"{self.PREFIX}status__in": value}) if value else queryset

    def filter_group(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return queryset.filter(**{f"{self.PREFIX}group": value})

    def filter_search(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return queryset.filter(Q(**{f"{self.PREFIX}name__icontains": value}) | Q(**{f"{self.PREFIX}notes__icontains": value}))
