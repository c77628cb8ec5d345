-- Library (included): back to the email's own lane, and wake a worker.
-- The one way a taken, scheduled or dead-lettered email rejoins a lane: every give-back,
-- reclaim, due retry and replay includes it. The lane is the one the task message's
-- routing key names (a lane's whole key name); anything else (another app's item, text
-- that is not a message) goes to the interactive lane, where the worker that takes it
-- dead-letters it as malformed.
-- head: true puts it at the head, taken next (it was taken once already: a give-back or
-- a reclaim keeps its turn); false at the back (a due retry, a replay).
-- include: wake.lua
local function lane_of(item, interactive, bulk)
  -- A plain search, not a JSON decode: a give-back or a replay of 100,000 emails runs
  -- this for each. The body is base64, so only the properties can hold the key; both of
  -- JSON's usual spellings (emailq's compact one, kombu's with spaces) are looked for.
  if string.find(item, '"routing_key":"' .. bulk .. '"', 1, true)
     or string.find(item, '"routing_key": "' .. bulk .. '"', 1, true) then
    return bulk
  end
  return interactive
end
local function to_lane(item, interactive, bulk, wake_key, head)
  local lane = lane_of(item, interactive, bulk)
  if head then redis.call('RPUSH', lane, item) else redis.call('LPUSH', lane, item) end
  wake(wake_key, 1)
  return lane
end
