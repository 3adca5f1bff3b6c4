-- KEYS: done:s, done:f, done:c, fin:s, fin:f, fin:c. ARGV: limit. Removes (and returns) the ids
-- whose results expired, from both sets of their status; their hashes have expired already
-- (PEXPIREAT).
local now = now_s()
local left = tonumber(ARGV[1])
local out = {}
for k = 1, 3 do
  if left <= 0 then break end
  local ids = redis.call('ZRANGEBYSCORE', KEYS[k], '-inf', now, 'LIMIT', 0, left)
  for _, id in ipairs(ids) do
    redis.call('ZREM', KEYS[k], id)
    redis.call('ZREM', KEYS[k + 3], id)
    out[#out + 1] = id
  end
  left = left - #ids
end
return out
