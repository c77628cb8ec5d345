-- move_due: due retries to the back of their own lane.             (scheduled -> queued)
-- KEYS[1] <p><q>:schedule   KEYS[2] <p><q>   KEYS[3] <p><q>:bulk   KEYS[4] <p><q>:wake
-- ARGV[1] how many at most
-- Returns how many moved. Any number of workers may run it at once: each due email moves
-- exactly once.
-- include: to_lane.lua
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms, 'LIMIT', 0, tonumber(ARGV[1]))
for _, item in ipairs(due) do
  to_lane(item, KEYS[2], KEYS[3], KEYS[4], false)
  redis.call('ZREM', KEYS[1], item)
end
return #due
