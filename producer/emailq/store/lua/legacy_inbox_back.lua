-- legacy_inbox_back: what an older release left in a dead worker's inbox, back to the head
-- of its lane.                                                 (old in flight -> queued)
-- KEYS[1] the old inbox   KEYS[2] <q>   KEYS[3] _emailq.inboxes   KEYS[4] its alive key
-- KEYS[5] <q>:bulk   KEYS[6] <q>:wake
-- ARGV[1] the inbox's member of _emailq.inboxes
-- Returns how many moved, or -1 when its worker is alive.
-- include: to_lane.lua
if redis.call('EXISTS', KEYS[4]) == 1 then return -1 end
local n = 0
while true do
  local item = redis.call('LINDEX', KEYS[1], -1)
  if not item then break end
  to_lane(item, KEYS[2], KEYS[5], KEYS[6], true)
  redis.call('RPOP', KEYS[1])
  n = n + 1
end
redis.call('SREM', KEYS[3], ARGV[1])
return n
