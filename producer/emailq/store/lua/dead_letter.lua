-- dead_letter: an entry into the DLQ, and, when it was taken, out of the in-flight list,
-- in one step; then retention on a few older entries.     (in flight | nowhere -> DLQ)
-- KEYS[1] <p><q>:dlq   KEYS[2] <p><q>:dlq:index   KEYS[3] <p><q>:inflight:<owner> (any key
-- when the entry comes from nowhere)   KEYS[4] <p><q>:trace
-- ARGV[1] id   ARGV[2] the entry (JSON)   ARGV[3] failed_at (s, Redis's clock)
-- ARGV[4] the item, as taken ('' when the entry comes from nowhere)
-- ARGV[5] retention's max_entries   ARGV[6] max_age (s)   ARGV[7] budget
-- ARGV[8] the trace's lifetime, ms (0: off)   ARGV[9] why, for the trace (no secret)
-- Returns {added (0: the list no longer held the item), dropped by count, dropped by age}.
-- Types are checked first, so that a key of the wrong type fails the whole move rather
-- than half of it; retention runs last, so a Redis too full for the HSET refuses the add
-- before anything is dropped (a drop is never left unlogged).
-- include: dlq_retain.lua
-- include: trace.lua
if ARGV[4] ~= '' and not redis.call('LPOS', KEYS[3], ARGV[4]) then return {0, 0, 0} end
local t1, t2 = redis.call('TYPE', KEYS[1]).ok, redis.call('TYPE', KEYS[2]).ok
if (t1 ~= 'none' and t1 ~= 'hash') or (t2 ~= 'none' and t2 ~= 'zset') then
  return redis.error_reply('WRONGTYPE the dead-letter keys hold another type')
end
unindex_entry(ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
index_entry(ARGV[1], ARGV[2], ARGV[3])
if ARGV[4] ~= '' then redis.call('LREM', KEYS[3], 1, ARGV[4]) end
trace(KEYS[4], tonumber(ARGV[8]), ARGV[1], 'dead ' .. ARGV[9])
local dropped = retain(tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]))
return {1, dropped[1], dropped[2]}
