-- leave: a stopping owner unregisters, if its in-flight list is empty (moves nothing).
-- KEYS[1] <p><q>:owners   KEYS[2] <p><q>:alive:<owner>   KEYS[3] <p><q>:inflight:<owner>
-- ARGV[1] the owner
-- Returns 1 when it left; 0 when emails are still in its list (they wait for its heartbeat
-- to lapse, and a reclaim).
if redis.call('LLEN', KEYS[3]) > 0 then return 0 end
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
