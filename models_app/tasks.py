"""Celery tasks for models: thin, they take an id and call a service."""
from __future__ import annotations

from celery import shared_task


@shared_task(acks_late=True, ignore_result=True)
def model_train_task(job_id: int) -> None:
    from .services import model_train_run

    model_train_run(job_id)
