-- ack: delivered emails out of one in-flight list.              (in flight -> delivered)
-- KEYS[1] <p><q>:inflight:<owner>   KEYS[2] <p><q>:trace
-- ARGV[1] the trace's lifetime, ms (0: off)   ARGV[2..] the items, as taken
-- Oldest (the tail) first. Returns how many were asked for.
-- include: trace.lua
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do
  if redis.call('LREM', KEYS[1], -1, ARGV[i]) > 0 then trace(KEYS[2], ttl, trace_id(ARGV[i]), 'delivered') end
end
return #ARGV - 1
