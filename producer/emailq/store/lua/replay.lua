-- replay: a dead letter back to the back of its own lane, as the task message given.
--                                                                     (DLQ -> queued)
-- KEYS[1] <p><q>:dlq   KEYS[2] <p><q>:dlq:index   KEYS[3] <p><q>   KEYS[4] <p><q>:bulk
-- KEYS[5] <p><q>:wake   KEYS[6] <p><q>:trace
-- ARGV[1] id   ARGV[2] the task message (a fresh attempt budget, the same id)
-- ARGV[3] the trace's lifetime, ms (0: off)   ARGV[4] traced emails kept at most
-- Returns 1 when moved, 0 when the entry is no longer there (replayed or purged meanwhile).
-- include: dlq_index.lua
-- include: to_lane.lua
-- include: trace.lua
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local lane = to_lane(ARGV[2], KEYS[3], KEYS[4], KEYS[5], false)
-- A replay is a new life: it starts a trace if the old one expired.
if redis.call('EXISTS', KEYS[6] .. ':' .. ARGV[1]) == 1 then
  trace(KEYS[6], tonumber(ARGV[3]), ARGV[1], 'replayed ' .. lane_label(lane))
else
  trace_new(KEYS[6], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[1], '', 'replayed ' .. lane_label(lane))
end
unindex_entry(ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
