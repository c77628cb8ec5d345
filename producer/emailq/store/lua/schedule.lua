-- schedule: a taken email into the retry schedule, due after a delay on Redis's clock.
--                                                              (in flight -> scheduled)
-- KEYS[1] <p><q>:inflight:<owner>   KEYS[2] <p><q>:schedule   KEYS[3] <p><q>:trace
-- ARGV[1] the item, as taken   ARGV[2] the retry's task message   ARGV[3] delay, ms
-- ARGV[4] the trace's lifetime, ms (0: off)   ARGV[5] what the attempt came to (no secret)
-- Returns 1 when moved, 0 when the list no longer holds the item (another worker
-- reclaimed it). The add before the removal: if Redis refuses the add (full), nothing moved.
-- include: trace.lua
if not redis.call('LPOS', KEYS[1], ARGV[1]) then return 0 end
local now = redis.call('TIME')
local due = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], due, ARGV[2])
redis.call('LREM', KEYS[1], 1, ARGV[1])
trace(KEYS[3], tonumber(ARGV[4]), trace_id(ARGV[1]), 'retry ' .. due .. ' ' .. ARGV[5])
return 1
