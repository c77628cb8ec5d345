"""The retry schedule: emails waiting out a backoff in Redis, not in a worker thread.

`<q>:schedule` is a sorted set of task messages scored by when they are due, in
milliseconds of Redis's own clock (`TIME`), so workers with skewed clocks agree. An email
moves from a worker's in-flight list into the schedule in one script, and from the
schedule to the back of its own lane in another (`emailq.store.moves`), which any number
of workers may run at once: each due email is moved exactly once. The set is persisted with the rest of Redis
(AOF), so it survives a worker crash and a Redis restart.
"""

from __future__ import annotations

import redis

from emailq.store.keys import Keys
from emailq.store.moves import Moves
from emailq.store.trace import TraceLimits

MOVE_BATCH = 1000


class RetrySchedule:
    def __init__(self, client: redis.Redis, keys: Keys, trace: TraceLimits | None = None):
        self.redis = client
        self.key = keys.schedule
        self._moves = Moves(client, keys, trace)

    def add(self, inflight_key: str, item: bytes, retry: str | bytes, delay_seconds: float, why: str = "") -> bool:
        """Move a taken email (`item`) into the schedule as `retry`, due after the delay
        (`why`: what its attempt came to, for its trace, never a secret). False when the
        in-flight list no longer holds it (it was reclaimed)."""
        return self._moves.schedule(inflight_key, item, retry, int(delay_seconds * 1000), why)

    def move_due(self) -> int:
        """Put every due email at the back of its lane; returns how many moved."""
        moved = total = self._moves.move_due(MOVE_BATCH)
        while moved == MOVE_BATCH:
            moved = self._moves.move_due(MOVE_BATCH)
            total += moved
        return total

    def count(self) -> int:
        return int(self.redis.zcard(self.key))
