"""The filters and orderings of the dataset lists (the API's and the datasets page's)."""
from __future__ import annotations

import django_filters

from workers.listing import JobFilterSet, job_ordering

from .models import Dataset, Source


class DatasetFilter(JobFilterSet):
    PREFIX = "job__"
    source = django_filters.ChoiceFilter(choices=Source.choices)
    ordering = job_ordering(PREFIX, extra=(("job__owner__username", "owner"), ("source", "source"), ("image_width", "size")))

    class Meta:
        model = Dataset
        fields = ["source"]
