"""Flower, shown the dead-letter queue's depth beside the queue's.

Flower's Broker page and `/api/queues/length` count the Redis lists that workers consume.
The DLQ is a hash and a sorted set that no worker consumes, so Flower cannot see it; this
adds it to that count as one more row, `<queue>:dlq`.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("emailq.flower")


def show_dead_letters(queue: str) -> None:
    try:
        from flower.utils.broker import RedisBase
    except ImportError:  # a Flower whose internals moved: it still runs, without the row
        log.warning("this Flower version does not expose its Redis broker; DLQ depth not shown")
        return
    count_queues = RedisBase.queues
    index_key = f"{queue}:dlq:index"

    async def queues(self: Any, names: Any) -> list[dict[str, Any]]:
        # Before Flower's own count, which closes the connection when done.
        try:
            dead = await self.redis.zcard(index_key)
        except Exception:
            await self.redis.aclose()
            raise
        return [*await count_queues(self, names), {"name": f"{queue}:dlq", "messages": dead}]

    RedisBase.queues = queues
