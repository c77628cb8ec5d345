-- enqueue: a new email onto its lane, and a wake token.          (nowhere -> queued)
-- KEYS[1] the email's lane (<p><q> or <p><q>:bulk)   KEYS[2] <p><q>:wake
-- KEYS[3] <p><q>:trace
-- ARGV[1] the task message   ARGV[2] the trace's lifetime, ms (0: off)
-- ARGV[3] traced emails kept at most   ARGV[4] the email's id   ARGV[5] its address's hash
-- One command and one reply, where a MULTI would be five. The lane first: an error there
-- (a full Redis, a wrong type) aborts the script before anything is written.
-- include: wake.lua
-- include: trace.lua
redis.call('LPUSH', KEYS[1], ARGV[1])
wake(KEYS[2], 1)
trace_new(KEYS[3], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5], 'queued ' .. lane_label(KEYS[1]))
return 1
