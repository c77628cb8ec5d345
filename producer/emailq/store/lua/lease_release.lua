-- lease_release: release a lease if it is still ours (moves nothing).
-- KEYS[1] the lease   ARGV[1] our token
-- Returns 1 when released, 0 when it was not ours (any more).
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, #ARGV[1] + 1) ~= ARGV[1] .. ' ' then return 0 end
return redis.call('DEL', KEYS[1])
