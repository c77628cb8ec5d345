"""The retry schedule: emails waiting out a backoff in Redis, not in a worker thread.

`<q>:schedule` is a sorted set of task messages scored by when they are due, in
milliseconds of Redis's own clock (`TIME`), so workers with skewed clocks agree. An email
moves from a worker's in-flight list into the schedule in one script, and from the
schedule to the back of its queue in another, which any number of workers may run at
once: each due email is moved exactly once. The set is persisted with the rest of Redis
(AOF), so it survives a worker crash and a Redis restart.
"""

from __future__ import annotations

import redis

from emailq.keys import Keys

# KEYS: in-flight list, schedule. ARGV: the taken item, the retry's task message, delay ms.
# The add comes before the removal: if Redis refuses the add (full), nothing moved.
_SCHEDULE = """
if not redis.call('LPOS', KEYS[1], ARGV[1]) then return 0 end
local now = redis.call('TIME')
local due = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], due, ARGV[2])
redis.call('LREM', KEYS[1], 1, ARGV[1])
return 1
"""

# KEYS: schedule, queue. ARGV: how many at most.
_MOVE_DUE = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms, 'LIMIT', 0, tonumber(ARGV[1]))
for _, item in ipairs(due) do
  redis.call('LPUSH', KEYS[2], item)
  redis.call('ZREM', KEYS[1], item)
end
return #due
"""

MOVE_BATCH = 1000


class RetrySchedule:
    def __init__(self, client: redis.Redis, queue: str):
        self.redis = client
        self.queue = queue
        self.key = Keys(queue).schedule
        self._schedule = client.register_script(_SCHEDULE)
        self._move_due = client.register_script(_MOVE_DUE)

    def add(self, inflight_key: str, item: bytes, retry: str, delay_seconds: float) -> bool:
        """Move a taken email (`item`) into the schedule as `retry`, due after the delay.
        False when the in-flight list no longer holds it (it was reclaimed)."""
        delay_ms = max(0, int(delay_seconds * 1000))
        return bool(self._schedule(keys=[inflight_key, self.key], args=[item, retry, delay_ms]))

    def move_due(self) -> int:
        """Put every due email at the back of the queue; returns how many moved."""
        moved = total = int(self._move_due(keys=[self.key, self.queue], args=[MOVE_BATCH]))
        while moved == MOVE_BATCH:
            moved = int(self._move_due(keys=[self.key, self.queue], args=[MOVE_BATCH]))
            total += moved
        return total

    def count(self) -> int:
        return int(self.redis.zcard(self.key))
