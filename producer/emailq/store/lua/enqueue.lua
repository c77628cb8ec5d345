-- enqueue: a new email onto its lane, and a wake token.          (nowhere -> queued)
-- KEYS[1] the email's lane (<p><q> or <p><q>:bulk)   KEYS[2] <p><q>:wake
-- ARGV[1] the task message
-- One command and one reply, where a MULTI would be five. The lane first: an error there
-- (a full Redis, a wrong type) aborts the script before anything is written.
-- include: wake.lua
redis.call('LPUSH', KEYS[1], ARGV[1])
wake(KEYS[2], 1)
return 1
