-- Debounce (enqueue_replacing): store one task, or replace what its id holds on this queue.
-- KEYS: ready, sched, leases, seq, sl, pk, ck, done:s, done:f, done:c, fin:s, fin:f, fin:c,
--       then (on a standalone server only) the id's index key
-- ARGV: task key prefix, work channel, queue, key prefix, id, kind, priority, eta, payload,
--       options, result_ttl, concurrency key ('' for none), limit, function
-- The kind is '0' on a standalone server (the script checks and sets the id index, as
-- enqueue.lua does) or '<claim ms> <token>' on a Redis Cluster (the caller holds the id's index
-- entry under that token; see claim_index.lua).
-- Returns '1' stored as new, '2' a pending task replaced, '3' a finished one replaced, '4'
-- running (nothing changed), 'Q' known on another queue (nothing changed), and on a cluster
-- 'F' or 'S' as enqueue.lua (claim the index entry again).
-- A replaced task leaves every index of its old state and takes a new rank; its hash keeps
-- only its fencing token and, if it was pending, its enqueue time. It is one script, so a
-- claim (claim.lua, on this queue's slot) runs wholly before it or wholly after it.
SL = KEYS[5]
PK = KEYS[6]
CK = KEYS[7]
local now = now_s()
local id = ARGV[5]
local tk = ARGV[1] .. id
local kind = ARGV[6]
local verdict = id_verdict(kind, KEYS[14], ARGV[3], id, math.floor(now * 1000))
if verdict == '0' then
  return 'Q'
elseif verdict then
  return verdict
end
local h = redis.call('HMGET', tk, 'st', 'rk', 'ck', 'enq')
local out = '1'
local enq = now
if h[1] == '1' then
  return '4'
elseif h[1] == '0' then
  if h[2] then
    redis.call('ZREM', KEYS[1], h[2])
    redis.call('ZREM', SL, h[2])
    redis.call('ZREM', PK, h[2])
    if h[3] then redis.call('ZREM', CK .. ':w:' .. h[3], h[2]) end
  end
  redis.call('ZREM', KEYS[2], id)
  out = '2'
  enq = tonumber(h[4]) or now
else
  if h[1] then out = '3' end
  for k = 8, 13 do redis.call('ZREM', KEYS[k], id) end
  redis.call('PERSIST', tk)
end
redis.call('HDEL', tk, 'cr', 'sa', 'fa', 'ex', 'v', 'err', 'tb', 'pg', 'pm', 'wid', 'lu', 'ck',
           'cl', 'rk')
local eta = tonumber(ARGV[8])
redis.call('HSET', tk, 'st', 0, 'pri', ARGV[7], 'eta', eta, 'pl', ARGV[9], 'op', ARGV[10],
           'ttl', ARGV[11], 'enq', enq, 'fn', ARGV[14], 'att', 0, 'ret', 0)
if ARGV[12] ~= '' then redis.call('HSET', tk, 'ck', ARGV[12], 'cl', ARGV[13]) end
requeue(tk, id, tonumber(ARGV[7]), eta, now)
if out == '2' and h[3] then
  -- It may have been the task a freed slot of its key was waiting for.
  unpark(KEYS[1], h[3], now)
end
redis.call('PUBLISH', ARGV[2], '')
return out
