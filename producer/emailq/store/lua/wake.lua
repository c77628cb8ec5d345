-- Library (included): wake idle workers.
-- Idle workers block on <p><q>:wake; one token wakes one, which then takes until the lanes
-- are empty. The list is capped, so tokens never pile up in a Redis nobody drains. Best
-- effort (pcall): once an email is on its lane, no error may say it is not.
local function wake(key, tokens)
  for _ = 1, tokens do redis.pcall('LPUSH', key, 1) end
  redis.pcall('LTRIM', key, 0, WAKE_TOKENS_KEPT - 1)
end
