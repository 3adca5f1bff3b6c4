-- Takes tasks of one queue out of every worker's reach, for moving them to another store (see
-- `Backend.hold`): first those already held by the mover, then pending ones (due, scheduled
-- and parked) in claim order. Each becomes running under a new claim by the mover, as a
-- claim makes it (fencing token raised, in `leases` and `run`), with a lease that never ends;
-- its attempts, ETA, retries and error stay as they are. A pending task is taken only from
-- the structure that holds it (`ready`, `sl` or a key's parked set), in this one script: a
-- task a worker claimed is no longer there, and a task held is no longer there for a claim.
-- A held task takes no concurrency slot (it runs nowhere).
-- KEYS: ready, sched, leases, ck, sl, pk, run, seq
-- ARGV: task key prefix, limit, mover's worker id, lease end (the end of time)
-- Returns per task: id, its fields as HELD lists them ('' if absent, else '=' and the value),
-- then its fencing token.
local HELD = {'pl', 'op', 'pri', 'eta', 'enq', 'ttl', 'ck', 'cl', 'fn', 'att', 'ret', 'err', 'tb'}
local now = now_s()
local limit = tonumber(ARGV[2])
local lease_until = tonumber(ARGV[4])
local out = {}
local n = 0
local function take(id, tk)
  local fence = redis.pcall('HINCRBY', tk, 'fence', 1)
  if type(fence) == 'table' then
    -- not an integer (a damaged record): replaced, as claim.lua does
    fence = 1000000000 + redis.call('INCR', KEYS[8])
    redis.call('HSET', tk, 'fence', fence)
  end
  redis.call('HSET', tk, 'st', 1, 'lu', ARGV[4], 'wid', ARGV[3], 'sa', now)
  redis.call('HDEL', tk, 'rk', 'pg', 'pm')
  redis.call('ZADD', KEYS[3], lease_until, id)
  redis.call('ZADD', KEYS[7], now, id)
  out[#out + 1] = id
  local h = redis.call('HMGET', tk, unpack(HELD))
  for j = 1, #HELD do
    if h[j] then out[#out + 1] = '=' .. h[j] else out[#out + 1] = '' end
  end
  out[#out + 1] = string.format('%d', fence)
  n = n + 1
end
-- already held by this mover (a run cut short): leased until the end of time
local mine = redis.call('ZRANGEBYSCORE', KEYS[3], ARGV[4], '+inf')
for _, id in ipairs(mine) do
  if n >= limit then break end
  local tk = ARGV[1] .. id
  local h = redis.call('HMGET', tk, 'st', 'wid')
  if h[1] == '1' and h[2] == ARGV[3] then take(id, tk) end
end
-- pending ones, by rank (priority, ETA, enqueue order) across the three sets they may be in;
-- a stale member met (its task gone, taken, or ranked anew) is removed, so each round makes
-- progress
while n < limit do
  local heads = {}
  for _, set in ipairs({KEYS[1], KEYS[5], KEYS[6]}) do
    for _, r in ipairs(redis.call('ZRANGE', set, 0, limit - n - 1)) do
      heads[#heads + 1] = {r, set}
    end
  end
  if #heads == 0 then break end
  table.sort(heads, function(a, b) return lex_lt(a[1], b[1]) end)
  for _, head in ipairs(heads) do
    if n >= limit then break end
    local r, set = head[1], head[2]
    local id = string.sub(r, 35)
    local tk = ARGV[1] .. id
    local h = redis.call('HMGET', tk, 'st', 'rk', 'ck')
    redis.call('ZREM', set, r)
    -- (a due task stored before ranks were kept has none of its own)
    if h[1] == '0' and (h[2] == r or (not h[2] and set == KEYS[1])) then
      if set == KEYS[5] then redis.call('ZREM', KEYS[2], id) end
      if set == KEYS[6] and h[3] then
        local wk = KEYS[4] .. ':w:' .. h[3]
        redis.call('ZREM', wk, r)
        if redis.call('EXISTS', wk) == 0 then redis.call('SREM', KEYS[4], h[3]) end
      end
      take(id, tk)
    end
  end
end
return out
