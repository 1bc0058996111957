"""Quick requests answered by an inference worker, never by the web process.

An inference worker is a Celery worker on the `inference` queue (`manage.py serve` starts
one; it sees no GPU by default, so it answers while every device trains). Its tasks keep
what they load warm between requests (networks, snapshots), and the web process waits for
the answer through the result backend. Which tasks exist is the domain's business:
models_app registers them with Celery; this module only sends a request and waits.

A task answers `{"ok": true, ...}` or `{"ok": false, "error": "...", "field": ...}`: an
error a person can act on comes back as data, and the caller raises it as a JobError.
"""
from __future__ import annotations

from typing import Any

from celery import current_app
from celery.exceptions import TimeoutError as CeleryTimeout
from django.conf import settings

from .errors import JobError

INFERENCE_QUEUE = "inference"


def ask(task: str, timeout: float | None = None, **kwargs: Any) -> dict[str, Any]:
    """Send `task` to the inference queue and wait for its answer (a dict)."""
    timeout = timeout or settings.INFERENCE_TIMEOUT_SECONDS
    result = current_app.send_task(task, kwargs=kwargs, queue=INFERENCE_QUEUE, expires=timeout)
    try:
        reply = result.get(timeout=timeout, propagate=False, interval=0.01)
    except CeleryTimeout:
        result.revoke()
        raise JobError(
            f"No inference worker answered within {timeout:g} s. `manage.py serve` starts one; if this "
            "persists, ask an admin to check the inference worker."
        ) from None
    finally:
        result.forget()
    if not isinstance(reply, dict):
        # The task raised: a bug, not bad input. Its traceback is in the worker's log.
        raise JobError(f"The inference worker failed ({type(reply).__name__}: {reply}); its log has the details.")
    if not reply.get("ok"):
        raise JobError(reply.get("error") or "The inference worker refused the request.", field=reply.get("field"))
    return reply
