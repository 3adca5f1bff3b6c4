-- Puts a pending task (hash fields already set) in `ready` or `sched`, under a new rank kept in
-- its `rk`; a scheduled task's rank is also listed in `SL` (declared here; each script using
-- these sets it to its `sl` key first). KEYS[1..4] must be ready, sched, leases, seq.
local SL
local function requeue(tk, id, pri, eta, now)
  local r = rank(pri, eta, redis.call('INCR', KEYS[4]), id)
  redis.call('HSET', tk, 'rk', r)
  if eta <= now then
    redis.call('ZADD', KEYS[1], 0, r)
  else
    redis.call('ZADD', KEYS[2], eta, id)
    redis.call('ZADD', SL, 0, r)
  end
end
-- Moves due scheduled tasks to `ready` under the rank they were scheduled with (so a listing
-- in progress sees each once); a task scheduled before ranks were kept gets one now.
local function promote(now)
  local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do
    redis.call('ZREM', KEYS[2], id)
    local tk = ARGV[1] .. id
    local h = redis.call('HMGET', tk, 'st', 'pri', 'eta', 'rk')
    if h[1] == '0' then
      if h[4] then
        redis.call('ZREM', SL, h[4])
        redis.call('ZADD', KEYS[1], 0, h[4])
      else
        requeue(tk, id, tonumber(h[2]), tonumber(h[3]) or now, now)
      end
    end
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
