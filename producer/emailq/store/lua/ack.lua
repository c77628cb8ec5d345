-- ack: delivered emails out of one in-flight list.              (in flight -> delivered)
-- KEYS[1] <p><q>:inflight:<owner>
-- ARGV    the items, as taken
-- Oldest (the tail) first. Returns how many were asked for.
for i = 1, #ARGV do redis.call('LREM', KEYS[1], -1, ARGV[i]) end
return #ARGV
