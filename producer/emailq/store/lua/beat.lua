-- beat: renew this owner's heartbeat on every queue it serves (moves nothing).
-- KEYS    for each queue: <p><q>:alive:<owner>, then <p><q>:owners
-- ARGV[1] the owner   ARGV[2] lifetime, ms
-- Returns 1: renewed; 2: one had lapsed, nobody took that list (renewed); 0: the owner is
-- not registered on some queue (another worker reclaimed its list): every heartbeat key of
-- it deleted, nothing renewed. A PEXPIRE is what a full Redis under noeviction still takes.
local lapsed = {}
for i = 1, #KEYS, 2 do
  if redis.call('PEXPIRE', KEYS[i], ARGV[2]) == 0 then
    if redis.call('SISMEMBER', KEYS[i + 1], ARGV[1]) == 0 then
      for j = 1, #KEYS, 2 do redis.call('DEL', KEYS[j]) end
      return 0
    end
    lapsed[#lapsed + 1] = KEYS[i]
  end
end
for _, key in ipairs(lapsed) do redis.call('SET', key, 1, 'PX', ARGV[2]) end
if #lapsed > 0 then return 2 end
return 1
