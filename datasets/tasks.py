"""Celery tasks for datasets: thin, they take an id and call a service."""
from __future__ import annotations

from celery import shared_task


@shared_task(acks_late=True, ignore_result=True)
def dataset_build_task(job_id: int) -> None:
    from .services import dataset_build_run

    dataset_build_run(job_id)
