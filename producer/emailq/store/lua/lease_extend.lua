-- lease_extend: extend a lease if it is still ours (moves nothing).
-- KEYS[1] the lease   ARGV[1] our token   ARGV[2] lifetime, ms
-- The value is the token, a space, and what its holder said of itself. Returns 1 or 0.
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, #ARGV[1] + 1) ~= ARGV[1] .. ' ' then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
