-- Library (included): the dead-letter queue's reason and type indexes, kept in the same
-- step as every move in or out of it. KEYS[1] of every script that includes it is
-- <p><q>:dlq; the index keys are named from it (<p><q>:dlq:reason:<r>, :dlq:type:<t>,
-- :dlq:no-type, :dlq:counts), so a Redis Cluster would need them declared: emailq runs on
-- one primary. pcall: a row that is not JSON keeps its move working, only unindexed.
local function dlq_facets(row)
  local ok, e = pcall(cjson.decode, row)
  if not ok or type(e) ~= 'table' or type(e.reason) ~= 'string' then return nil end
  local t = nil
  local env = e.envelope
  if type(env) == 'table' and type(env.message) == 'table' and type(env.message.type) == 'string' then
    t = env.message.type
  end
  return e.reason, t
end
local function dlq_facet_keys(reason, t)
  local base = KEYS[1] .. ':'
  local tkey, tfield = base .. 'no-type', 'no-type'
  if t then tkey, tfield = base .. 'type:' .. t, 'type:' .. t end
  return {{base .. 'reason:' .. reason, 'reason:' .. reason}, {tkey, tfield}}
end
local function index_entry(id, row, score)
  local reason, t = dlq_facets(row)
  if not reason then return end
  for _, kf in ipairs(dlq_facet_keys(reason, t)) do
    if redis.call('ZADD', kf[1], score, id) == 1 then redis.call('HINCRBY', KEYS[1] .. ':counts', kf[2], 1) end
  end
end
local function unindex_entry(id)
  local row = redis.call('HGET', KEYS[1], id)
  if not row then return end
  local reason, t = dlq_facets(row)
  if not reason then return end
  local counts = KEYS[1] .. ':counts'
  for _, kf in ipairs(dlq_facet_keys(reason, t)) do
    if redis.call('ZREM', kf[1], id) == 1 and redis.call('HINCRBY', counts, kf[2], -1) <= 0 then
      redis.call('HDEL', counts, kf[2])
    end
  end
end
