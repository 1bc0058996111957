"""Live events: Channels group messages sent after the database commit.

Used by the job services (status changes) and the metric relay. Consumers in
frontend/consumers.py forward them to the browser.
"""
from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

log = logging.getLogger(__name__)

JOBS_GROUP = "jobs"


def job_group(job_id: int) -> str:
    return f"job-{job_id}"


def _send(groups: list[str], payload: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    for group in groups:
        try:
            async_to_sync(layer.group_send)(group, {"type": "job.event", "data": payload})
        except Exception:  # Redis down must never break training or a request
            log.warning("could not publish event to %s", group, exc_info=True)


def publish(job_id: int, payload: dict[str, Any], *, broadcast: bool = False) -> None:
    """Send `payload` to the job's group (and the console group) once the transaction commits."""
    groups = [job_group(job_id)] + ([JOBS_GROUP] if broadcast else [])
    payload = {"job": job_id, **payload}
    transaction.on_commit(lambda: _send(groups, payload))
