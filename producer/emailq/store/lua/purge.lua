-- purge: dead letters deleted for good.                               (DLQ -> nowhere)
-- KEYS[1] <p><q>:dlq   KEYS[2] <p><q>:dlq:index   KEYS[3] <p><q>:trace
-- ARGV[1] the trace's lifetime, ms (0: off)   ARGV[2..] ids
-- Returns how many were still there.
-- include: dlq_index.lua
-- include: trace.lua
local removed = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  unindex_entry(id)
  if redis.call('HDEL', KEYS[1], id) == 1 then
    removed = removed + 1
    trace(KEYS[3], tonumber(ARGV[1]), id, 'purged')
  end
  redis.call('ZREM', KEYS[2], id)
end
return removed
