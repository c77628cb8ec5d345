-- schedule: a taken email into the retry schedule, due after a delay on Redis's clock.
--                                                              (in flight -> scheduled)
-- KEYS[1] <p><q>:inflight:<owner>   KEYS[2] <p><q>:schedule
-- ARGV[1] the item, as taken   ARGV[2] the retry's task message   ARGV[3] delay, ms
-- Returns 1 when moved, 0 when the list no longer holds the item (another worker
-- reclaimed it). The add before the removal: if Redis refuses the add (full), nothing moved.
if not redis.call('LPOS', KEYS[1], ARGV[1]) then return 0 end
local now = redis.call('TIME')
local due = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], due, ARGV[2])
redis.call('LREM', KEYS[1], 1, ARGV[1])
return 1
