-- Library (included): the DLQ's retention. KEYS[1] <p><q>:dlq   KEYS[2] <p><q>:dlq:index
-- retain(max_entries, max_age, budget) drops the entries that failed more than `max_age`
-- seconds ago by Redis's clock (0: no age limit), then the oldest beyond `max_entries`
-- (0: no cap), at most `budget` in all, each with its index entries.
-- Returns {dropped by count, dropped by age}.
-- include: dlq_index.lua
local function retain(max_entries, max_age, budget)
  local old = {}
  if max_age > 0 then
    local t = redis.call('TIME')
    local cutoff = tonumber(t[1]) + tonumber(t[2]) / 1000000 - max_age
    old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. string.format('%.6f', cutoff), 'LIMIT', 0, budget)
  end
  if #old > 0 then
    for _, id in ipairs(old) do unindex_entry(id) end
    redis.call('HDEL', KEYS[1], unpack(old))
    redis.call('ZREM', KEYS[2], unpack(old))
  end
  local excess = 0
  if max_entries > 0 then excess = redis.call('ZCARD', KEYS[2]) - max_entries end
  local n = math.min(excess, budget - #old)
  local over = {}
  if n > 0 then
    over = redis.call('ZRANGE', KEYS[2], 0, n - 1)
    for _, id in ipairs(over) do unindex_entry(id) end
    redis.call('HDEL', KEYS[1], unpack(over))
    redis.call('ZREM', KEYS[2], unpack(over))
  end
  return {#over, #old}
end
