-- Tasks taken from another store (see `Backend.put_stored`), each stored pending as it was
-- there. The explicit-id index handling is enqueue.lua's: the same KEYS, kinds and answers.
-- KEYS: ready, sched, seq, done:s, done:f, done:c, then (on a standalone server only) the id
--       index key of each task, in order
-- ARGV: task key prefix, work channel, queue, key prefix, then per task (15 values): id, kind
--       ('0' on a standalone server, '<claim ms> <token>' on a Redis Cluster), priority, eta,
--       payload, options, result_ttl, concurrency key, limit, function, enqueued_at,
--       attempts, retries, then the last error and its traceback ('' for none, else '=' and
--       the text)
-- Returns one character per task: '1' stored, '0' already known (here or on the queue the
-- index names), and on a cluster 'F' or 'S' as enqueue.lua answers them.
local now = now_s()
local now_ms = math.floor(now * 1000)
local out = {}
local added = 0
local n = (#ARGV - 4) / 15
local seq = redis.call('INCRBY', KEYS[3], n) - n
local sl = queue_key(ARGV[3], 'sl')
for i = 5, #ARGV, 15 do
  local id = ARGV[i]
  local kind = ARGV[i + 1]
  local tk = ARGV[1] .. id
  local verdict = id_verdict(kind, KEYS[7 + (i - 5) / 15], ARGV[3], id, now_ms)
  if verdict then
    out[#out + 1] = verdict
  elseif redis.call('EXISTS', tk) == 1 then
    out[#out + 1] = '0'
  else
    -- an id whose earlier result expired here: forget its old entries
    redis.call('ZREM', KEYS[4], id)
    redis.call('ZREM', KEYS[5], id)
    redis.call('ZREM', KEYS[6], id)
    redis.call('ZREM', queue_key(ARGV[3], 'fin:s'), id)
    redis.call('ZREM', queue_key(ARGV[3], 'fin:f'), id)
    redis.call('ZREM', queue_key(ARGV[3], 'fin:c'), id)
    local eta = tonumber(ARGV[i + 3])
    seq = seq + 1
    local r = rank(tonumber(ARGV[i + 2]), eta, seq, id)
    if eta <= now then
      redis.call('ZADD', KEYS[1], 0, r)
    else
      redis.call('ZADD', KEYS[2], eta, id)
      redis.call('ZADD', sl, 0, r)
    end
    redis.call('HSET', tk, 'st', 0, 'pri', ARGV[i + 2], 'eta', ARGV[i + 3], 'pl', ARGV[i + 4],
               'op', ARGV[i + 5], 'ttl', ARGV[i + 6], 'enq', ARGV[i + 10], 'rk', r,
               'fn', ARGV[i + 9], 'att', ARGV[i + 11], 'ret', ARGV[i + 12])
    if ARGV[i + 7] ~= '' then redis.call('HSET', tk, 'ck', ARGV[i + 7], 'cl', ARGV[i + 8]) end
    if ARGV[i + 13] ~= '' then redis.call('HSET', tk, 'err', string.sub(ARGV[i + 13], 2)) end
    if ARGV[i + 14] ~= '' then redis.call('HSET', tk, 'tb', string.sub(ARGV[i + 14], 2)) end
    out[#out + 1] = '1'
    added = added + 1
  end
end
if added > 0 then redis.call('PUBLISH', ARGV[2], '') end
return table.concat(out)
