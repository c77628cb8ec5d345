-- enqueue_once: a new email onto its lane unless its idempotency key already enqueued
-- one.                                                               (nowhere -> queued)
-- KEYS[1] <p><q>:idem:<sha256 of the key>   KEYS[2] the email's lane   KEYS[3] <p><q>:wake
-- KEYS[4] <p><q>:trace
-- ARGV[1] the key's record ("<email digest> <id>")   ARGV[2] its lifetime, ms
-- ARGV[3] the task message   ARGV[4] the trace's lifetime, ms (0: off)
-- ARGV[5] traced emails kept at most   ARGV[6] the email's id   ARGV[7] its address's hash
-- Returns the key's record when it already enqueued an email (nothing written), else nil.
-- LPUSH before SET: a script is not rolled back, so the only write that can fail (LPUSH on
-- a wrong type, or the first write under maxmemory) comes first; the key is set right
-- after the email lands, so nothing can part the two.
-- include: wake.lua
-- include: trace.lua
local first = redis.call('GET', KEYS[1])
if first then return first end
redis.call('LPUSH', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
wake(KEYS[3], 1)
trace_new(KEYS[4], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], ARGV[7], 'queued ' .. lane_label(KEYS[2]))
return false
