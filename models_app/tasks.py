"""Celery tasks for models: thin, they take an id and call a service."""
from __future__ import annotations

from celery import shared_task


@shared_task(acks_late=True, ignore_result=True)
def model_rank_task(allocation_id: int) -> None:
    """One rank of a training job, sent by the scheduler to its device's own queue."""
    from .services import model_rank_run

    model_rank_run(allocation_id)
