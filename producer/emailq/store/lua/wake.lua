-- Library (included): wake idle workers.
-- Idle workers block on <p><q>:wake; one token wakes one, which then takes until the lanes
-- are empty. The list is capped, so tokens never pile up in a Redis nobody drains. Best
-- effort (pcall): once an email is on its lane, no error may say it is not.
local function wake(key, tokens)
  if tokens < 1 then return end
  local ones = {}
  for i = 1, tokens do ones[i] = 1 end
  -- One push, and a trim only past the cap: the common case is one command.
  local length = redis.pcall('LPUSH', key, unpack(ones))
  if type(length) == 'number' and length > WAKE_TOKENS_KEPT then
    redis.pcall('LTRIM', key, 0, WAKE_TOKENS_KEPT - 1)
  end
end
