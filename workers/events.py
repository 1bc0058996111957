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


# Whether the last push failed: an outage is logged once, when it starts and ends, not
# at every event (pages catch up from the database when they reconnect).
_failing = False


def _send(groups: list[str], payload: dict[str, Any]) -> None:
    global _failing
    layer = get_channel_layer()
    if layer is None:
        return
    for group in groups:
        try:
            async_to_sync(layer.group_send)(group, {"type": "job.event", "data": payload})
        except Exception as exc:  # Redis down must never break training or a request
            if not _failing:
                log.warning("could not push live events (%s: %s); pages catch up when it is back", type(exc).__name__, exc)
            _failing = True
        else:
            if _failing:
                log.warning("live events pushed again")
            _failing = False


# What the console's group gets of an event: every logged-in user listens there, so no
# name, message or error of a job they may not see (the page reloads what it shows).
BROADCAST_FIELDS = ("job", "type", "status")


def publish(job_id: int, payload: dict[str, Any], *, broadcast: bool = False) -> None:
    """Send `payload` to the job's group (whose members may see the job), and its bare
    outline (BROADCAST_FIELDS) to the console's group, once the transaction commits."""
    payload = {"job": job_id, **payload}
    outline = {k: v for k, v in payload.items() if k in BROADCAST_FIELDS}
    transaction.on_commit(lambda: _send([job_group(job_id)], payload))
    if broadcast:
        transaction.on_commit(lambda: _send([JOBS_GROUP], outline))
