-- legacy_unacked_back: one message an older release left in kombu's unacked hash, back to
-- the head of its lane.                                        (old in flight -> queued)
-- KEYS[1] unacked   KEYS[2] unacked_index   KEYS[3] <q>   KEYS[4] <q>:bulk   KEYS[5] <q>:wake
-- ARGV[1] its delivery tag   ARGV[2] the message to queue
-- Returns 1 when moved, 0 when it is no longer there.
-- include: to_lane.lua
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
to_lane(ARGV[2], KEYS[3], KEYS[4], KEYS[5], true)
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
