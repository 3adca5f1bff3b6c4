-- Concurrency keys. `CK` (declared here; each script using these sets it to its `ck` key first) is the set of keys that
-- have parked tasks; per key, `CK:r:<key>` holds the running tasks scored by lease expiry and
-- `CK:w:<key>` the parked ones: their ready members, scored by their concurrency limit.
-- `PK` (set likewise to the `pk` key) lists every parked rank in order, for listings.
local CK
local PK
local function running(ck, now)
  return redis.call('ZCOUNT', CK .. ':r:' .. ck, '(' .. string.format('%.17g', now), '+inf')
end
local function park(tk, ck, limit, r)
  redis.call('ZADD', CK .. ':w:' .. ck, limit, r)
  redis.call('ZADD', PK, 0, r)
  redis.call('SADD', CK, ck)
  redis.call('HSET', tk, 'rk', r)
end
-- Moves parked tasks of `ck` back to `ready` while, counting them, they fit under their own
-- limit (lowest limits first, then in queue order); the claim checks each again.
local function unpark(ready, ck, now)
  local wk = CK .. ':w:' .. ck
  local busy = running(ck, now)
  local moved = 0
  while true do
    local m = redis.call('ZRANGEBYSCORE', wk, '(' .. (busy + moved), '+inf', 'LIMIT', 0, 1)
    if #m == 0 then break end
    redis.call('ZREM', wk, m[1])
    redis.call('ZREM', PK, m[1])
    redis.call('ZADD', ready, 0, m[1])
    moved = moved + 1
  end
  if redis.call('EXISTS', wk) == 0 then redis.call('SREM', CK, ck) end
  return moved
end
