-- dlq_index_build: index entries of a DLQ from before the reason and type indexes
-- (idempotent; moves nothing).
-- KEYS[1] <p><q>:dlq   KEYS[2] <p><q>:dlq:index
-- ARGV    ids
-- Returns how many were asked for.
-- include: dlq_index.lua
for _, id in ipairs(ARGV) do
  local row = redis.call('HGET', KEYS[1], id)
  if row then index_entry(id, row, redis.call('ZSCORE', KEYS[2], id)) end
end
return #ARGV
