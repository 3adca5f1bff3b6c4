-- KEYS: ready, sched, leases, seq, sl, done:f, done:c, fin:f, fin:c. ARGV: task key prefix, work
-- channel, then task ids.
-- Makes each failed or cancelled task that still has its payload pending again, due now: same
-- id, payload and options; attempts and retries 0; result, error, progress, start, finish and
-- expiry cleared (the hash no longer expires); a new rank in `ready`. Idle workers are woken as
-- by an enqueue. Returns one character per id: '0' not found, '1' refused, '2' requeued.
SL = KEYS[5]
local now = now_s()
local out = {}
local woken = false
for i = 3, #ARGV do
  local id = ARGV[i]
  local tk = ARGV[1] .. id
  local h = redis.call('HMGET', tk, 'st', 'pri', 'pl')
  if not h[1] then
    out[#out + 1] = '0'
  elseif (h[1] ~= '3' and h[1] ~= '4') or not h[3] then
    out[#out + 1] = '1'
  else
    local k = 6
    if h[1] == '4' then k = 7 end
    redis.call('ZREM', KEYS[k], id)
    redis.call('ZREM', KEYS[k + 2], id)
    redis.call('PERSIST', tk)
    redis.call('HDEL', tk, 'cr', 'sa', 'fa', 'ex', 'v', 'err', 'tb', 'pg', 'pm', 'wid', 'lu')
    redis.call('HSET', tk, 'st', 0, 'eta', now, 'att', 0, 'ret', 0)
    requeue(tk, id, tonumber(h[2]), now, now)
    out[#out + 1] = '2'
    woken = true
  end
end
if woken then redis.call('PUBLISH', ARGV[2], '') end
return table.concat(out)
