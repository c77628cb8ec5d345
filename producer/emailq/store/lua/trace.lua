-- Library (included): each email's trace (`emailq trace`), written in the same step as
-- the move it records, so it costs no round trip and never disagrees with the places.
-- base is <p><q>:trace, ttl its lifetime in ms (0: the trace is off):
--   <base>:<id>      list  the email's events, oldest first: "<ms> <event>[ <detail>]",
--                          never a code, a link or an address; the last TRACE_EVENTS_KEPT
--   <base>:index     zset  traced ids by when they were enqueued (ms): the count cap
--   <base>:to:<hash> zset  ids sent to the address with that hash (`emailq.store.trace`),
--                          the newest TRACE_PER_ADDRESS
-- Each key lives `ttl` after its last write; beyond `most` emails the oldest traces go.
-- Best effort (pcall): a trace key Redis refuses never fails the move it records.
local trace_now = nil
local function trace_ms()
  if not trace_now then
    local t = redis.call('TIME')
    trace_now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return trace_now
end
-- The id of a task message: its headers' "id" (the body is base64, so no other "id" key
-- is in the text); nil for anything that is not an email's message.
local function trace_id(item)
  return string.match(item, '"id": ?"([^"]+)"')
end
local function lane_label(lane)
  if string.sub(lane, -5) == ':bulk' then return 'bulk' end
  return 'interactive'
end
local function trace(base, ttl, id, event)
  if ttl <= 0 or not id then return end
  local key = base .. ':' .. id
  redis.pcall('RPUSH', key, trace_ms() .. ' ' .. event)
  redis.pcall('LTRIM', key, -TRACE_EVENTS_KEPT, -1)
  redis.pcall('PEXPIRE', key, ttl)
end
local function trace_new(base, ttl, most, id, to_hash, event)
  if ttl <= 0 then return end
  local index = base .. ':index'
  redis.pcall('ZADD', index, trace_ms(), id)
  local count = redis.pcall('ZCARD', index)
  if type(count) == 'number' and count > most then
    local oldest = redis.pcall('ZPOPMIN', index, math.min(count - most, 10))
    if type(oldest) == 'table' and not oldest.err then
      for i = 1, #oldest, 2 do redis.pcall('DEL', base .. ':' .. oldest[i]) end
    end
  end
  if to_hash ~= '' then
    local to = base .. ':to:' .. to_hash
    redis.pcall('ZADD', to, trace_ms(), id)
    redis.pcall('ZREMRANGEBYRANK', to, 0, -(TRACE_PER_ADDRESS + 1))
    redis.pcall('PEXPIRE', to, ttl)
  end
  trace(base, ttl, id, event)
end
