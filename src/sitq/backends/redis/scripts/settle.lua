-- KEYS: ready, sched, leases, seq, done:s, done:f, done:c, settle record (per request), ck,
--       sl, pk, run, fin:s, fin:f, fin:c
-- ARGV: task key prefix, work channel, done channel prefix, then entries:
--   F id fence status(2|3|4) value error traceback ttl   (optional values: '' or '=' .. data)
--   R id fence eta error traceback
--   L id fence
--   D id fence delay   (a release due again `delay` seconds from now)
-- Returns one character per entry: '1' applied, '0' refused.
-- The settle record keeps the request's answer for 10 s, so a retry whose first reply was lost
-- gets the same answer (a new request with the same settlements is refused, as it must be).
-- Settling a keyed task frees its slot: parked tasks of its key go back to `ready` if they now
-- fit, and idle workers are woken. A settled task leaves `run`; a finished one enters the
-- `fin` set of its status, scored by -finished_at, and only a success drops its payload (a
-- failed task may be requeued). Progress is kept until the next claim (snapshots show it only
-- while the task runs), except that a finish drops it.
CK = KEYS[9]
SL = KEYS[10]
PK = KEYS[11]
local previous = redis.call('GET', KEYS[8])
if previous then
  -- a retry of a request that ran: its answer again, nothing applied twice
  return previous
end
local now = now_s()
local out = {}
local work = false
local keys = {}
local function opt(tk, field, v)
  if v == '' then
    redis.call('HDEL', tk, field)
  else
    redis.call('HSET', tk, field, string.sub(v, 2))
  end
end
local i = 4
while i <= #ARGV do
  local kind = ARGV[i]
  local id = ARGV[i + 1]
  local tk = ARGV[1] .. id
  local h = redis.call('HMGET', tk, 'st', 'fence', 'pri', 'eta', 'ck')
  local ok = h[1] == '1' and h[2] == ARGV[i + 2]
  if ok then redis.call('ZREM', KEYS[12], id) end
  if ok and h[5] then
    redis.call('ZREM', CK .. ':r:' .. h[5], id)
    keys[h[5]] = true
  end
  if kind == 'F' then
    if ok then
      local ex = now + tonumber(ARGV[i + 7])
      local code = tonumber(ARGV[i + 3])
      redis.call('HSET', tk, 'st', code, 'fa', now, 'ex', ex)
      opt(tk, 'v', ARGV[i + 4])
      opt(tk, 'err', ARGV[i + 5])
      opt(tk, 'tb', ARGV[i + 6])
      if code == 2 then
        redis.call('HDEL', tk, 'pl', 'lu', 'wid', 'pg', 'pm')
      else
        redis.call('HDEL', tk, 'lu', 'wid', 'pg', 'pm')
      end
      redis.call('ZREM', KEYS[3], id)
      redis.call('PEXPIREAT', tk, string.format('%d', math.ceil(ex * 1000)))
      redis.call('ZADD', KEYS[3 + code], ex, id)
      redis.call('ZADD', KEYS[11 + code], -now, id)
      redis.call('PUBLISH', ARGV[3] .. id, ARGV[i + 3])
    end
    i = i + 8
  elseif kind == 'R' then
    if ok then
      local eta = tonumber(ARGV[i + 3])
      redis.call('HSET', tk, 'st', 0, 'eta', eta)
      redis.call('HINCRBY', tk, 'ret', 1)
      opt(tk, 'err', ARGV[i + 4])
      opt(tk, 'tb', ARGV[i + 5])
      redis.call('HDEL', tk, 'lu', 'wid')
      redis.call('ZREM', KEYS[3], id)
      requeue(tk, id, tonumber(h[3]), eta, now)
      work = true
    end
    i = i + 6
  elseif kind == 'D' then
    if ok then
      local eta = now + tonumber(ARGV[i + 3])
      redis.call('HSET', tk, 'st', 0, 'eta', eta)
      redis.call('HINCRBY', tk, 'att', -1)
      redis.call('HDEL', tk, 'lu', 'wid')
      redis.call('ZREM', KEYS[3], id)
      requeue(tk, id, tonumber(h[3]), eta, now)
      work = true
    end
    i = i + 4
  else
    if ok then
      redis.call('HSET', tk, 'st', 0)
      redis.call('HINCRBY', tk, 'att', -1)
      redis.call('HDEL', tk, 'lu', 'wid')
      redis.call('ZREM', KEYS[3], id)
      requeue(tk, id, tonumber(h[3]), tonumber(h[4]), now)
      work = true
    end
    i = i + 3
  end
  if ok then out[#out + 1] = '1' else out[#out + 1] = '0' end
end
for ck in pairs(keys) do
  unpark(KEYS[1], ck, now)
  work = true
end
if work then redis.call('PUBLISH', ARGV[2], '') end
local answer = table.concat(out)
redis.call('SET', KEYS[8], answer, 'PX', 10000)
return answer
