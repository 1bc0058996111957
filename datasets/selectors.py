"""Reads for datasets."""
from __future__ import annotations

from django.db.models import QuerySet

from workers.models import JobStatus

from .models import Dataset


def dataset_list() -> QuerySet[Dataset]:
    return Dataset.objects.select_related("job", "job__owner").order_by("-job__created_at")


def dataset_usable_list() -> QuerySet[Dataset]:
    """Datasets a model can be trained on: built, or still building (the model waits)."""
    return dataset_list().filter(job__status__in=[JobStatus.DONE, *JobStatus.active()])
