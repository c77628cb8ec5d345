-- reclaim: a dead owner's whole in-flight list back to the head of each email's own lane,
-- and the owner unregistered.                                     (in flight -> queued)
-- KEYS[1] <p><q>:owners   KEYS[2] <p><q>:alive:<owner>   KEYS[3] <p><q>:inflight:<owner>
-- KEYS[4] <p><q>   KEYS[5] <p><q>:bulk   KEYS[6] <p><q>:wake   KEYS[7] <p><q>:trace
-- ARGV[1] the owner   ARGV[2] the trace's lifetime, ms (0: off)
-- Returns how many emails moved, or -1 when the owner's heartbeat is there (alive after all).
-- The list's head is its newest take, so the oldest ends at a lane's head, taken first.
-- Each push before its removal: a refused push leaves the rest of the list where it was.
-- include: to_lane.lua
-- include: trace.lua
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local n = 0
while true do
  local item = redis.call('LINDEX', KEYS[3], 0)
  if not item then break end
  local lane = to_lane(item, KEYS[4], KEYS[5], KEYS[6], true)
  trace(KEYS[7], tonumber(ARGV[2]), trace_id(item), 'reclaimed ' .. lane_label(lane) .. ' from ' .. ARGV[1])
  redis.call('LPOP', KEYS[3])
  n = n + 1
end
redis.call('SREM', KEYS[1], ARGV[1])
return n
