-- KEYS: the worker records hash (worker id to '<expires_at> <data>'). ARGV: now.
-- Returns the records that have not expired by `now` as (id, record) pairs, and deletes the
-- expired ones.
local now = tonumber(ARGV[1])
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for j = 1, #all, 2 do
  local expires = tonumber(string.match(all[j + 1], '^(%S+) '))
  if expires and expires > now then
    out[#out + 1] = all[j]
    out[#out + 1] = all[j + 1]
  else
    redis.call('HDEL', KEYS[1], all[j])
  end
end
return out
