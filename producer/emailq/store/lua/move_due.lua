-- move_due: due retries to the back of their own lane.             (scheduled -> queued)
-- KEYS[1] <p><q>:schedule   KEYS[2] <p><q>   KEYS[3] <p><q>:bulk   KEYS[4] <p><q>:wake
-- KEYS[5] <p><q>:trace
-- ARGV[1] how many at most   ARGV[2] the trace's lifetime, ms (0: off)
-- Returns how many moved. Any number of workers may run it at once: each due email moves
-- exactly once.
-- include: to_lane.lua
-- include: trace.lua
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms, 'LIMIT', 0, tonumber(ARGV[1]))
for _, item in ipairs(due) do
  local lane = to_lane(item, KEYS[2], KEYS[3], KEYS[4], false)
  trace(KEYS[5], tonumber(ARGV[2]), trace_id(item), 'due ' .. lane_label(lane))
  redis.call('ZREM', KEYS[1], item)
end
return #due
