"""Flower, shown the retry schedule's and the dead-letter queue's depths beside the queue's.

Flower's Broker page and `/api/queues/length` count the Redis lists that workers consume.
The schedule and the DLQ are sorted sets that no worker consumes, so Flower cannot see
them; this adds them to that count as two more rows, `<queue>:schedule` and `<queue>:dlq`
(named as Flower names the queues, without the key prefix that Flower and kombu add).
"""

from __future__ import annotations

import logging
from typing import Any

from emailq.store.keys import Keys

log = logging.getLogger("emailq.flower")


def show_dead_letters(keys: Keys) -> None:
    try:
        from flower.utils.broker import RedisBase
    except ImportError:  # a Flower whose internals moved: it still runs, without the row
        log.warning("this Flower version does not expose its Redis broker; DLQ depth not shown")
        return
    count_queues = RedisBase.queues

    async def queues(self: Any, names: Any) -> list[dict[str, Any]]:
        # Before Flower's own count, which closes the connection when done.
        try:
            scheduled = await self.redis.zcard(keys.schedule)
            dead = await self.redis.zcard(keys.dlq_index)
        except Exception:
            await self.redis.aclose()
            raise
        return [
            *await count_queues(self, names),
            {"name": f"{keys.queue}:schedule", "messages": scheduled},
            {"name": f"{keys.queue}:dlq", "messages": dead},
        ]

    RedisBase.queues = queues
