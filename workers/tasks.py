"""The engine's Celery tasks: thin, they take an id and hand it to the runner. The kind of
the job (workers/kinds.py) decides what runs."""
from __future__ import annotations

from celery import shared_task

from .ranks import rank_run
from .runner import job_run
from .scheduler import schedule


@shared_task(acks_late=True, ignore_result=True)
def job_run_task(job_id: int) -> None:
    """A job of a device-less kind (a dataset build), on its kind's queue."""
    try:
        job_run(job_id)
    finally:
        schedule()  # jobs that waited on this one (models on their dataset) may start or fail now


@shared_task(acks_late=True, ignore_result=True)
def job_rank_task(allocation_id: int) -> None:
    """One rank of a placed job, sent by the scheduler to its device's own queue."""
    rank_run(allocation_id)
