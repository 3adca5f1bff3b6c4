-- KEYS: ready, sched, leases, seq, claim record (a list, per claim request), ck, sl, pk, run
-- ARGV: task key prefix, limit, lease seconds, worker id, work channel, most tasks to park
-- Returns: TIME seconds, TIME microseconds, next due time ('' if none), the number of tasks
--          parked by this call, then per claim five strings: id, payload, options, "fence
--          attempts priority retries enqueued_at ttl cancel eta" (few reply elements parse much
--          faster than many), and the function ('' if none was stored).
-- A claim clears the task's progress and enters it in `run` (the running tasks by start).
-- The claim record lists what the request claimed, for 10 s: a retry of a request whose reply
-- was lost hands out the same claims again instead of taking more tasks.
-- A keyed task whose key is full is parked (see lib/keyed.lua) instead of being handed out, and
-- the claim goes on with the tasks behind it; at most ARGV[6] per call, so that one script
-- never blocks the server for long (it then reports work due now and publishes a wake-up).
CK = KEYS[6]
SL = KEYS[7]
PK = KEYS[8]
local now, t = now_s()
local out = {t[1], t[2], '', 0}
local record = redis.call('LRANGE', KEYS[5], 0, -1)
if #record > 0 then
  for j = 1, #record, 2 do
    local id = record[j]
    local h = redis.call('HMGET', ARGV[1] .. id, 'st', 'fence', 'att', 'pl', 'op', 'pri', 'ret',
                         'enq', 'ttl', 'cr', 'eta', 'fn')
    if h[1] == '1' and h[2] == record[j + 1] then
      out[#out + 1] = id
      out[#out + 1] = h[4]
      out[#out + 1] = h[5]
      out[#out + 1] = table.concat({h[2], h[3], h[6] or '?', h[7] or '0', h[8] or '?',
                                    h[9] or '?', h[10] or '0', h[11] or '?'}, ' ')
      out[#out + 1] = h[12] or ''
    end
  end
  out[3] = next_due()
  return out
end
promote(now)
local limit = tonumber(ARGV[2])
local lease_until = now + tonumber(ARGV[3])
local n = 0
local parked = 0
local function take(id, tk, ck)
  -- A fencing token or attempt count that is not an integer (a damaged record) would fail
  -- HINCRBY and end the script halfway: replace it (a token far above any earlier claim's)
  -- and mark it with '?' so that the worker fails the task.
  local fence = redis.pcall('HINCRBY', tk, 'fence', 1)
  local mark = ''
  if type(fence) == 'table' then
    fence = string.format('%d', 1000000000 + redis.call('INCR', KEYS[4]))
    redis.call('HSET', tk, 'fence', fence)
    mark = '?'
  end
  local att = redis.pcall('HINCRBY', tk, 'att', 1)
  if type(att) == 'table' then
    att = '?'
    redis.call('HSET', tk, 'att', 1)
  end
  redis.call('HSET', tk, 'st', 1, 'lu', lease_until, 'wid', ARGV[4], 'sa', now)
  redis.call('HDEL', tk, 'rk', 'pg', 'pm')
  redis.call('ZADD', KEYS[3], lease_until, id)
  redis.call('ZADD', KEYS[9], now, id)
  if ck then redis.call('ZADD', CK .. ':r:' .. ck, lease_until, id) end
  redis.call('RPUSH', KEYS[5], id, fence)
  local h = redis.call('HMGET', tk, 'pl', 'op', 'pri', 'ret', 'enq', 'ttl', 'cr', 'eta', 'fn')
  out[#out + 1] = id
  out[#out + 1] = h[1]
  out[#out + 1] = h[2]
  out[#out + 1] = table.concat({mark .. fence, att, h[3] or '?', h[4] or '0', h[5] or '?',
                                h[6] or '?', h[7] or '0', h[8] or '?'}, ' ')
  out[#out + 1] = h[9] or ''
  n = n + 1
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(expired) do
  local tk = ARGV[1] .. id
  local h = redis.call('HMGET', tk, 'st', 'ck', 'cl')
  if h[1] ~= '1' then
    redis.call('ZREM', KEYS[3], id)
    redis.call('ZREM', KEYS[9], id)
  elseif h[2] and running(h[2], now) >= (tonumber(h[3]) or 1) then
    -- its worker was lost and its key has filled up meanwhile: pending again, parked
    local p = redis.call('HMGET', tk, 'pri', 'eta')
    redis.call('ZREM', KEYS[3], id)
    redis.call('ZREM', CK .. ':r:' .. h[2], id)
    redis.call('ZREM', KEYS[9], id)
    redis.call('HSET', tk, 'st', 0)
    redis.call('HDEL', tk, 'lu', 'wid')
    park(tk, h[2], tonumber(h[3]) or 1,
         rank(tonumber(p[1]), tonumber(p[2]), redis.call('INCR', KEYS[4]), id))
    parked = parked + 1
  else
    take(id, tk, h[2])
  end
end
while n < limit and parked < tonumber(ARGV[6]) do
  local popped = redis.call('ZPOPMIN', KEYS[1], limit - n)
  if #popped == 0 then break end
  for j = 1, #popped, 2 do
    local id = string.sub(popped[j], 35)
    local tk = ARGV[1] .. id
    local h = redis.call('HMGET', tk, 'st', 'ck', 'cl')
    if h[1] == '0' then
      if h[2] and running(h[2], now) >= (tonumber(h[3]) or 1) then
        park(tk, h[2], tonumber(h[3]) or 1, popped[j])
        parked = parked + 1
      else
        take(id, tk, h[2])
      end
    end
  end
end
if n > 0 then redis.call('PEXPIRE', KEYS[5], 10000) end
out[3] = next_due()
out[4] = parked
if n < limit and parked >= tonumber(ARGV[6]) and redis.call('EXISTS', KEYS[1]) == 1 then
  out[3] = string.format('%.17g', now)
  redis.call('PUBLISH', ARGV[5], '')
end
return out
