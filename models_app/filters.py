"""The filters and orderings of the model lists (the API's and the models page's)."""
from __future__ import annotations

import django_filters
from django.db.models import QuerySet

from workers.listing import JobFilterSet, job_ordering

from .models import Network, TrainedModel


class ModelFilter(JobFilterSet):
    PREFIX = "job__"
    dataset = django_filters.NumberFilter(field_name="dataset_id", help_text="Models trained on this dataset.")
    network = django_filters.ChoiceFilter(choices=Network.choices)
    has_snapshots = django_filters.BooleanFilter(
        method="filter_has_snapshots", help_text="Only models with (or without) a snapshot: what can be fine-tuned."
    )
    ordering = job_ordering(PREFIX, extra=(
        ("best_val_accuracy", "best"), ("network", "network"), ("epochs", "epochs"),
        ("job__owner__username", "owner"), ("dataset__job__name", "dataset"),
    ))

    class Meta:
        model = TrainedModel
        fields = ["dataset", "network"]

    def filter_has_snapshots(self, queryset: QuerySet[TrainedModel], name: str, value: bool) -> QuerySet[TrainedModel]:
        return queryset.filter(snapshots__isnull=not value).distinct()
