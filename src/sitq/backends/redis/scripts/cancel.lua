-- KEYS: ready, sched, done:c, ck, sl, pk, fin:c. ARGV: task key prefix, id, done channel
-- prefix, work channel.
-- Returns 0 not found, 1 cancelled, 2 cancel requested (running), 3 already finished.
-- A cancelled task keeps its payload (it may be requeued) and enters `fin:c`.
-- A cancelled keyed task may have been let out of parking for a slot it now leaves unused: the
-- key's parked tasks are looked at again.
CK = KEYS[4]
PK = KEYS[6]
local tk = ARGV[1] .. ARGV[2]
local h = redis.call('HMGET', tk, 'st', 'rk', 'ttl', 'ck')
if not h[1] then return 0 end
if h[1] == '0' then
  local now = now_s()
  if h[2] then
    redis.call('ZREM', KEYS[1], h[2])
    redis.call('ZREM', KEYS[5], h[2])
    redis.call('ZREM', PK, h[2])
  end
  redis.call('ZREM', KEYS[2], ARGV[2])
  if h[4] then
    if h[2] then redis.call('ZREM', CK .. ':w:' .. h[4], h[2]) end
    if unpark(KEYS[1], h[4], now) > 0 then redis.call('PUBLISH', ARGV[4], '') end
  end
  local ex = now + tonumber(h[3])
  redis.call('HSET', tk, 'st', 4, 'err', 'cancelled before it started', 'fa', now, 'ex', ex)
  redis.call('HDEL', tk, 'rk', 'v', 'tb')
  redis.call('PEXPIREAT', tk, string.format('%d', math.ceil(ex * 1000)))
  redis.call('ZADD', KEYS[3], ex, ARGV[2])
  redis.call('ZADD', KEYS[7], -now, ARGV[2])
  redis.call('PUBLISH', ARGV[3] .. ARGV[2], '4')
  return 1
end
if h[1] == '1' then
  redis.call('HSET', tk, 'cr', 1)
  return 2
end
return 3
