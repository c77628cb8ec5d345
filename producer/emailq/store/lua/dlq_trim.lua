-- dlq_trim: the DLQ's retention, a budget at a time.                  (DLQ -> nowhere)
-- KEYS[1] <p><q>:dlq   KEYS[2] <p><q>:dlq:index
-- ARGV[1] max_entries   ARGV[2] max_age (s)   ARGV[3] budget
-- Returns {dropped by count, dropped by age}.
-- include: dlq_retain.lua
return retain(tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
