-- KEYS: ready, sched, seq, done:s, done:f, done:c, then (on a standalone server only) the id
--       index key of each task, in order
-- ARGV: task key prefix, work channel, queue, key prefix, then per task (10 values): id, kind,
--       priority, eta ('' = now), payload, options, result_ttl, concurrency key, limit,
--       function ('' for none)
-- The kind of an id is '1' (generated), '0' (explicit, on a standalone server: the script
-- decides with the id index) or '<claim ms> <token>' (explicit, on a Redis Cluster: the caller
-- holds the id's index entry under that token, claimed at that time; see claim_index.lua).
-- Returns one character per task: '1' stored, '0' already known (here or on the queue the
-- index names), and on a cluster 'F' (the token was fenced by a takeover) or 'S' (the claim
-- is too old): claim the index entry again.
-- Every task gets its rank now (kept in `rk`): a due task's is its `ready` member, a scheduled
-- task's is listed in `sl` and becomes its `ready` member when it falls due.
local now = now_s()
local now_ms = math.floor(now * 1000)
local out = {}
local ready = {}
local added = 0
local n = (#ARGV - 4) / 10
local indexed = #KEYS > 6
-- sequence numbers for the whole call at once (unused ones are simply skipped)
local seq = redis.call('INCRBY', KEYS[3], n) - n
local sl = queue_key(ARGV[3], 'sl')
local scheduled = {}
for i = 5, #ARGV, 10 do
  local id = ARGV[i]
  local kind = ARGV[i + 1]
  local tk = ARGV[1] .. id
  local verdict = nil
  if kind == '1' then
    -- a generated id is indexed with its task
    if indexed then redis.call('SET', KEYS[7 + (i - 5) / 10], ARGV[3]) end
  else
    -- An explicit id still known on the queue its index entry names is left alone; else
    -- the entry names this queue, in the same step as the check (known here or stored).
    verdict = id_verdict(kind, KEYS[7 + (i - 5) / 10], ARGV[3], id, now_ms)
  end
  if verdict then
    out[#out + 1] = verdict
  elseif redis.call('EXISTS', tk) == 1 then
    -- a generated id can only exist if an earlier attempt of this very call stored it
    if kind == '1' then out[#out + 1] = '1' else out[#out + 1] = '0' end
  else
    if kind ~= '1' then
      -- an explicit id whose earlier result expired: forget its old entry
      redis.call('ZREM', KEYS[4], id)
      redis.call('ZREM', KEYS[5], id)
      redis.call('ZREM', KEYS[6], id)
      redis.call('ZREM', queue_key(ARGV[3], 'fin:s'), id)
      redis.call('ZREM', queue_key(ARGV[3], 'fin:f'), id)
      redis.call('ZREM', queue_key(ARGV[3], 'fin:c'), id)
    end
    local eta = now
    if ARGV[i + 3] ~= '' then eta = tonumber(ARGV[i + 3]) end
    seq = seq + 1
    local r = rank(tonumber(ARGV[i + 2]), eta, seq, id)
    if eta <= now then
      ready[#ready + 1] = 0
      ready[#ready + 1] = r
    else
      redis.call('ZADD', KEYS[2], eta, id)
      scheduled[#scheduled + 1] = 0
      scheduled[#scheduled + 1] = r
    end
    redis.call('HSET', tk, 'st', 0, 'pri', ARGV[i + 2], 'eta', eta, 'pl', ARGV[i + 4],
               'op', ARGV[i + 5], 'ttl', ARGV[i + 6], 'enq', now, 'rk', r, 'fn', ARGV[i + 9])
    if ARGV[i + 7] ~= '' then redis.call('HSET', tk, 'ck', ARGV[i + 7], 'cl', ARGV[i + 8]) end
    out[#out + 1] = '1'
    added = added + 1
  end
end
if #ready > 0 then redis.call('ZADD', KEYS[1], unpack(ready)) end
if #scheduled > 0 then redis.call('ZADD', sl, unpack(scheduled)) end
if added > 0 then redis.call('PUBLISH', ARGV[2], '') end
return table.concat(out)
