-- Removes tasks held for a move (see hold.lua) for good, each only if its claim is current.
-- KEYS: leases, run
-- ARGV: task key prefix, then per task: id, fencing token
-- Returns one character per task: '1' removed, '0' left alone.
local out = {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  local tk = ARGV[1] .. id
  local h = redis.call('HMGET', tk, 'st', 'fence')
  if h[1] == '1' and h[2] == ARGV[i + 1] then
    redis.call('DEL', tk)
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    out[#out + 1] = '1'
  else
    out[#out + 1] = '0'
  end
end
return table.concat(out)
