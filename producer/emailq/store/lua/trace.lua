-- Library (included): each email's trace (`emailq trace`), written in the same step as
-- the move it records, so it costs no round trip and never disagrees with the places.
-- base is <p><q>:trace, ttl its lifetime in ms (0: the trace is off):
--   <base>:<id>    string  the email's events, oldest first, one a line: "<ms> <event>[ <detail>]";
--                          never a code, a link or an address. Created with the email (its
--                          lifetime starts then); each later move APPENDs a line
--   <base>:index   list    "<id> <address hash>" of every traced email, newest first: the
--                          count cap (the oldest trace goes as a new one comes), and what
--                          a search by address reads
-- One command per move (APPEND), two per enqueue (a batch's index entries are one push):
-- cheap enough to be always on.
-- A trace starts with its email's enqueue (or a replay, a new life); a move of an email
-- whose trace is gone writes nothing.
-- Best effort (pcall): a trace key Redis refuses never fails the move it records.
-- The script's one timestamp, as the text every event line starts with (a number would be
-- formatted again for each line).
local trace_now = nil
local function trace_ms()
  if not trace_now then
    local t = redis.call('TIME')
    trace_now = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
  end
  return trace_now
end
-- The id of a task message: its headers' "id" (the body is base64, so no other "id" key
-- is in the text); nil for anything that is not an email's message.
local function trace_id(item)
  local at = string.find(item, '"id":"', 1, true)
  if not at then return string.match(item, '"id": "([^"]+)"') end
  local stop = string.find(item, '"', at + 6, true)
  if not stop then return nil end
  return string.sub(item, at + 6, stop - 1)
end
local function lane_label(lane)
  if string.sub(lane, -5) == ':bulk' then return 'bulk' end
  return 'interactive'
end
local function trace(base, ttl, id, event)
  if ttl <= 0 or not id then return end
  local key = base .. ':' .. id
  local line = trace_ms() .. ' ' .. event .. '\n'
  local size = redis.pcall('APPEND', key, line)
  if size == #line then
    -- No trace was there (it expired, or the count cap dropped it): it stays gone, so
    -- that no trace outlives its lifetime or the cap.
    redis.pcall('DEL', key)
  elseif type(size) == 'number' and size > TRACE_BYTES_KEPT then
    redis.pcall('SET', key, string.sub(redis.call('GET', key), -TRACE_BYTES_KEPT), 'KEEPTTL')
  end
end
-- Index entries ("<id> <address hash>") for new traces, newest last, in one push per
-- INDEX_PUSH_MOST (a batch's index costs one command, not one per email); past the count
-- cap, the oldest traces go, at most twice as many as came (so that a lowered cap is
-- reached over a few enqueues, never in one long script).
local function trace_index(base, most, entries)
  local index = base .. ':index'
  local count
  for first = 1, #entries, INDEX_PUSH_MOST do
    count = redis.pcall('LPUSH', index, unpack(entries, first, math.min(first + INDEX_PUSH_MOST - 1, #entries)))
  end
  if type(count) ~= 'number' or count <= most then return end
  local oldest = redis.pcall('RPOP', index, math.min(count - most, 2 * #entries))
  if type(oldest) ~= 'table' then return end
  local gone = {}
  for i, entry in ipairs(oldest) do gone[i] = base .. ':' .. string.match(entry, '^(%S+)') end
  for first = 1, #gone, INDEX_PUSH_MOST do
    redis.pcall('DEL', unpack(gone, first, math.min(first + INDEX_PUSH_MOST - 1, #gone)))
  end
end
-- A new trace (its first event), without its index entry: trace_index writes those.
local function trace_start(base, ttl, id, event)
  redis.pcall('SET', base .. ':' .. id, trace_ms() .. ' ' .. event .. '\n', 'PX', ttl)
end
local function trace_new(base, ttl, most, id, to_hash, event)
  if ttl <= 0 then return end
  trace_start(base, ttl, id, event)
  trace_index(base, most, {id .. ' ' .. to_hash})
end
