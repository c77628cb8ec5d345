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

from emailq.store.keys import Keys

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

# KEYS: schedule, interactive lane, bulk lane, wake list. ARGV: how many at most, and
# how many wake tokens to keep at most. Each email goes back to the lane its task message
# names (the bulk lane when its routing key, the lane's whole key, says so).
_MOVE_DUE = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms, 'LIMIT', 0, tonumber(ARGV[1]))
for _, item in ipairs(due) do
  local lane = KEYS[2]
  local ok, message = pcall(cjson.decode, item)
  if ok and type(message) == 'table' and type(message.properties) == 'table'
     and type(message.properties.delivery_info) == 'table'
     and message.properties.delivery_info.routing_key == KEYS[3] then
    lane = KEYS[3]
  end
  redis.call('LPUSH', lane, item)
  redis.call('ZREM', KEYS[1], item)
  redis.call('LPUSH', KEYS[4], 1)
end
if #due > 0 then redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[2]) - 1) end
return #due
"""

MOVE_BATCH = 1000
WAKE_TOKENS = 1000


class RetrySchedule:
    def __init__(self, client: redis.Redis, keys: Keys):
        self.redis = client
        self.key = keys.schedule
        self._keys = [keys.schedule, keys.interactive, keys.bulk, keys.wake]
        self._schedule = client.register_script(_SCHEDULE)
        self._move_due = client.register_script(_MOVE_DUE)

    def add(self, inflight_key: str, item: bytes, retry: str | bytes, delay_seconds: float) -> bool:
        """Move a taken email (`item`) into the schedule as `retry`, due after the delay.
        False when the in-flight list no longer holds it (it was reclaimed)."""
        delay_ms = max(0, int(delay_seconds * 1000))
        return bool(self._schedule(keys=[inflight_key, self.key], args=[item, retry, delay_ms]))

    def move_due(self) -> int:
        """Put every due email at the back of the queue; returns how many moved."""
        moved = total = int(self._move_due(keys=self._keys, args=[MOVE_BATCH, WAKE_TOKENS]))
        while moved == MOVE_BATCH:
            moved = int(self._move_due(keys=self._keys, args=[MOVE_BATCH, WAKE_TOKENS]))
            total += moved
        return total

    def count(self) -> int:
        return int(self.redis.zcard(self.key))
