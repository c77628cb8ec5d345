-- enqueue_many: new emails onto their lanes, all or none, and a few wake tokens.
--                                                                   (nowhere -> queued)
-- KEYS[1] <p><q>   KEYS[2] <p><q>:bulk   KEYS[3] <p><q>:wake   KEYS[4] <p><q>:trace
-- ARGV[1] the trace's lifetime, ms (0: off)   ARGV[2] traced emails kept at most
-- ARGV[3] wake tokens to push   ARGV[4] how many of the emails go to the interactive lane
-- then for each email, two: its task message, its trace's index entry ("<id> <address
-- hash>", whose id its trace's key takes); the interactive lane's emails first, then the
-- bulk lane's. Two arguments an email, not four: the ingest's producer packs fewer.
-- Returns how many were enqueued. Both lanes' types are checked first, and the first
-- write is a push (the one a full Redis refuses), so an error leaves nothing enqueued.
-- include: wake.lua
-- include: trace.lua
for i = 1, 2 do
  local t = redis.call('TYPE', KEYS[i]).ok
  if t ~= 'none' and t ~= 'list' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. t .. ', not a lane')
  end
end
local ttl, most = tonumber(ARGV[1]), tonumber(ARGV[2])
local bulk_from = 5 + 2 * tonumber(ARGV[4])
local n = 0
local index = {}
for i = 5, #ARGV, 2 do
  local lane = KEYS[1]
  if i >= bulk_from then lane = KEYS[2] end
  redis.call('LPUSH', lane, ARGV[i])
  n = n + 1
  if ttl > 0 then
    trace_start(KEYS[4], ttl, string.match(ARGV[i + 1], '^(%S+)'), 'queued ' .. lane_label(lane))
    index[n] = ARGV[i + 1]
  end
end
if ttl > 0 then trace_index(KEYS[4], most, index) end
wake(KEYS[3], tonumber(ARGV[3]))
return n
