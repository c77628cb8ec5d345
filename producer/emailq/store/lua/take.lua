-- take: up to ARGV[3] emails from the lanes onto this owner's in-flight list, within the
-- cluster's rate limit.                                              (queued -> in flight)
-- KEYS[1] <p><q>   KEYS[2] <p><q>:bulk   KEYS[3] <p><q>:inflight:<owner>   KEYS[4] <p><q>:rate
-- KEYS[5] <p><q>:rate:slowdown   KEYS[6] <p><q>:wake   KEYS[7] <p><q>:alive:<owner>
-- KEYS[8] <p><q>:trace
-- ARGV[1] the rate's emission interval, ms (0: no limit)   ARGV[2] burst tolerance, ms
-- ARGV[3] how many emails at most   ARGV[4] bulk first every n-th take (0: never)
-- ARGV[5] how many takes came before   ARGV[6] the trace's lifetime, ms (0: off)
-- Returns {1, lane, item[, lane, item ...]} (taken) | {0, ms} (wait that long) | {2} (both
-- lanes empty: the wake tokens are cleared, and the worker blocks on <p><q>:wake).
-- Nothing is taken while the owner's heartbeat key is gone: another worker may have taken
-- its list back, and nothing may land in a list after that.
-- The rate limit is a GCRA on Redis's clock: a take gets its slot and its email together,
-- or neither.
-- include: trace.lua
if redis.call('EXISTS', KEYS[7]) == 0 then return {0, NO_HEARTBEAT_WAIT_MS} end
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local most = tonumber(ARGV[3])
local every = tonumber(ARGV[4])
local before = tonumber(ARGV[5])
local now, tat
if interval > 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  interval = interval * tonumber(redis.call('GET', KEYS[5]) or '1')
  tat = tonumber(redis.call('GET', KEYS[4]) or '0')
  if tat < now then tat = now end
end
local out = {1}
local trace_ttl = tonumber(ARGV[6])
local owner = string.match(KEYS[3], ':inflight:(.+)$')
for n = 1, most do
  if interval > 0 and tat - now > burst then
    if n == 1 then return {0, tat - now - burst} end
    break
  end
  local first, second = KEYS[1], KEYS[2]
  if every > 0 and (before + n) % every == 0 then first, second = KEYS[2], KEYS[1] end
  local lane = first
  local item = redis.call('LMOVE', first, KEYS[3], 'RIGHT', 'LEFT')
  if not item then
    lane = second
    item = redis.call('LMOVE', second, KEYS[3], 'RIGHT', 'LEFT')
  end
  if not item then
    if n == 1 then
      redis.call('DEL', KEYS[6])
      return {2}
    end
    break
  end
  trace(KEYS[8], trace_ttl, trace_id(item), 'taken ' .. owner)
  out[#out + 1] = lane
  out[#out + 1] = item
  if interval > 0 then tat = tat + interval end
end
if interval > 0 then
  redis.call('SET', KEYS[4], tat, 'PX', math.ceil(tat - now) + 1000)
end
return out
