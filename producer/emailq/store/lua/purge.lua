-- purge: dead letters deleted for good.                               (DLQ -> nowhere)
-- KEYS[1] <p><q>:dlq   KEYS[2] <p><q>:dlq:index
-- ARGV    ids
-- Returns how many were still there.
-- include: dlq_index.lua
local removed = 0
for _, id in ipairs(ARGV) do
  unindex_entry(id)
  removed = removed + redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
return removed
