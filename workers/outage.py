"""Riding out a database outage in a worker (Postgres restarting, a network cut).

A worker that holds a run must not lose it because the database went away for a while:
the relay keeps the child's events in memory and stores them once the database is back
(workers/runner.py), the end of a run (its outcome, its device given back) waits for it,
and the heartbeat does not reap anyone until every live worker has had the time to say
it is alive again (workers/devices.py). Only a lost connection counts as an outage: a
query that is wrong still fails at once."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection

log = logging.getLogger(__name__)

T = TypeVar("T")

# What psycopg and Django raise when the server is gone, restarting or unreachable.
UNREACHABLE = (OperationalError, InterfaceError)


def forget_connection() -> None:
    """Drop this thread's (broken) connection so that the next query opens a new one.
    Call it outside any atomic block."""
    try:
        connection.close()
    except DatabaseError:
        pass


def until_database(what: str, call: Callable[[], T]) -> T:
    """`call()`, tried again while the database is unreachable (for DB_OUTAGE_SECONDS at
    most: then the last error is raised). `call` must be safe to run again: one atomic
    block, or conditional updates."""
    deadline = time.monotonic() + settings.DB_OUTAGE_SECONDS
    delay, down = 0.25, False
    while True:
        try:
            result = call()
        except UNREACHABLE as exc:
            forget_connection()
            if time.monotonic() + delay > deadline:
                raise
            if not down:
                log.warning("database unreachable while %s (%s); trying again until it is back", what, str(exc).strip())
                down = True
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        else:
            if down:
                log.warning("database back: %s", what)
            return result
