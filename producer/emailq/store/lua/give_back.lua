-- give_back: one email back to the head of its own lane, if this owner still holds it.
--                                                                 (in flight -> queued)
-- KEYS[1] <p><q>:inflight:<owner>   KEYS[2] <p><q>   KEYS[3] <p><q>:bulk   KEYS[4] <p><q>:wake
-- KEYS[5] <p><q>:trace
-- ARGV[1] the item, as taken   ARGV[2] the trace's lifetime, ms (0: off)
-- Returns 1 when moved, 0 when the list no longer holds it (another worker reclaimed it).
-- The push before the removal: a refused push (full, wrong type) moves nothing.
-- include: to_lane.lua
-- include: trace.lua
if not redis.call('LPOS', KEYS[1], ARGV[1]) then return 0 end
local lane = to_lane(ARGV[1], KEYS[2], KEYS[3], KEYS[4], true)
trace(KEYS[5], tonumber(ARGV[2]), trace_id(ARGV[1]), 'given-back ' .. lane_label(lane))
redis.call('LREM', KEYS[1], 1, ARGV[1])
return 1
