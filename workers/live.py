"""The engine's own Redis connection: the scheduler's lock and the devices' live stats.
(Live job events go through the Channels layer: workers/events.py.)"""
from __future__ import annotations

import json
import logging
from typing import Any, cast

import redis
from django.conf import settings

log = logging.getLogger(__name__)

LIVE_KEY = "digits:device:{uuid}"

_redis: redis.Redis | None = None


def redis_client() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2)
    return _redis


def store_stats(uuid: str, stats: dict[str, Any]) -> None:
    """The device's latest stats, kept as long as a device counts as alive. Best effort:
    Redis being down only loses the live view."""
    try:
        redis_client().set(LIVE_KEY.format(uuid=uuid), json.dumps(stats), ex=max(1, int(settings.DEVICE_DEAD_SECONDS)))
    except redis.RedisError:
        log.debug("could not publish stats of device %s", uuid, exc_info=True)


def live_stats(uuids: list[str]) -> dict[str, dict[str, Any]]:
    """The latest stats from Redis, for devices that heartbeated recently."""
    if not uuids:
        return {}
    try:
        values = cast(list[bytes | None], redis_client().mget([LIVE_KEY.format(uuid=u) for u in uuids]))
    except redis.RedisError:  # fall back to the rows' last stats
        return {}
    return {u: json.loads(v) for u, v in zip(uuids, values) if v}
