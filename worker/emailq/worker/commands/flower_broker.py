"""Flower's Broker page on Redis Sentinel: every Sentinel of the settings, not the first.

Flower builds the Redis client of its Broker page and `/api/queues/length`
(`flower.utils.broker.RedisSentinel`) from the broker URL's first host alone: with that
Sentinel down the page fails, though Flower's events still flow (kombu asks every
Sentinel). Here that client is emailq's own (`redis_client.async_redis_client`): every
Sentinel, with the same passwords and TLS as every other client.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from emailq.store.redis_client import async_redis_client, is_sentinel
from emailq.settings import Settings

log = logging.getLogger("emailq.flower")


def ask_every_sentinel(settings: Settings) -> None:
    """On a `sentinel://` URL, make Flower's Broker page use every Sentinel."""
    if not is_sentinel(settings):
        return
    try:
        from flower.utils.broker import RedisSentinel
    except ImportError:  # a Flower whose internals moved: the page asks the first Sentinel only
        log.warning("this Flower version does not expose its Sentinel broker; its Broker page asks the first Sentinel only")
        return

    def client(self: Any, broker_options: Any, broker_use_ssl: Any) -> Any:
        # Flower's timeouts (1 s to connect, 2 s to answer) and no retries: a page, not a job.
        return async_redis_client(
            settings, socket_timeout=self.socket_timeout, socket_connect_timeout=self.socket_connect_timeout, retry=Retry(NoBackoff(), 0)
        )

    RedisSentinel._get_redis_client = client
