-- Puts a pending task (hash fields already set) in `ready` or `sched`. KEYS[1..4] must be
-- ready, sched, leases, seq.
local function requeue(tk, id, pri, eta, now)
  if eta <= now then
    local r = rank(pri, eta, redis.call('INCR', KEYS[4]), id)
    redis.call('ZADD', KEYS[1], 0, r)
    redis.call('HSET', tk, 'rk', r)
  else
    redis.call('ZADD', KEYS[2], eta, id)
    redis.call('HDEL', tk, 'rk')
  end
end
local function promote(now)
  local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do
    redis.call('ZREM', KEYS[2], id)
    local tk = ARGV[1] .. id
    local h = redis.call('HMGET', tk, 'st', 'pri', 'eta')
    if h[1] == '0' then requeue(tk, id, tonumber(h[2]), tonumber(h[3]) or now, now) end
  end
end
local function next_due()
  local a = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  local b = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  local d = nil
  if a[2] then d = tonumber(a[2]) end
  if b[2] then
    local x = tonumber(b[2])
    if d == nil or x < d then d = x end
  end
  if d == nil then return '' end
  return string.format('%.17g', d)
end
