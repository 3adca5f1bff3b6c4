-- KEYS: ready, sched, sl, pk, ck, then for a finished status its done and fin sets.
-- ARGV: task key prefix, status code (0 pending, 2-4 finished; never 1), limit, most entries to
-- look at.
-- Deletes up to `limit` tasks of the queue in that status (pending: due, scheduled and parked
-- ones), removing stale entries met on the way. Returns whether entries may remain unread, the
-- number deleted, then the ids deleted or found gone (their id index entries can go).
local code = ARGV[2]
local limit = tonumber(ARGV[3])
local cap = tonumber(ARGV[4])
local out = {'0', 0}
local deleted, scanned = 0, 0
local function gone(id)
  out[#out + 1] = id
end
local function drop_pending(id, member)
  -- `member`: the rank it was found under (nil when found in `sched`)
  local tk = ARGV[1] .. id
  local h = redis.call('HMGET', tk, 'st', 'rk', 'ck')
  if h[1] ~= '0' or (member and h[2] ~= member) then return false end
  if h[2] then
    redis.call('ZREM', KEYS[1], h[2])
    redis.call('ZREM', KEYS[3], h[2])
    redis.call('ZREM', KEYS[4], h[2])
    if h[3] then
      local wk = KEYS[5] .. ':w:' .. h[3]
      redis.call('ZREM', wk, h[2])
      if redis.call('EXISTS', wk) == 0 then redis.call('SREM', KEYS[5], h[3]) end
    end
  end
  redis.call('ZREM', KEYS[2], id)
  redis.call('DEL', tk)
  deleted = deleted + 1
  gone(id)
  return true
end
-- Reads a set from its start until `limit` tasks are deleted or `cap` entries were looked at;
-- `take(member)` deletes the task or removes the stale entry. True if the set was read to its end.
local function drain(key, take)
  while deleted < limit and scanned < cap do
    local want = math.min(limit - deleted, cap - scanned)
    local got = redis.call('ZRANGE', key, 0, want - 1)
    if #got == 0 then return true end
    for _, m in ipairs(got) do
      scanned = scanned + 1
      take(m)
    end
  end
  return redis.call('EXISTS', key) == 0
end
local complete = true
if code == '0' then
  local function ranked(key)
    return function(m)
      if not drop_pending(string.sub(m, 35), m) then redis.call('ZREM', key, m) end
    end
  end
  complete = drain(KEYS[1], ranked(KEYS[1]))
  complete = drain(KEYS[2], function(id)
    if not drop_pending(id, nil) then redis.call('ZREM', KEYS[2], id) end
  end) and complete
  for _, ck in ipairs(redis.call('SMEMBERS', KEYS[5])) do
    local wk = KEYS[5] .. ':w:' .. ck
    complete = drain(wk, ranked(wk)) and complete
    if redis.call('EXISTS', wk) == 0 then redis.call('SREM', KEYS[5], ck) end
  end
  complete = drain(KEYS[3], ranked(KEYS[3])) and complete
  complete = drain(KEYS[4], ranked(KEYS[4])) and complete
elseif code ~= '1' then
  local function finished()
    return function(id)
      redis.call('ZREM', KEYS[6], id)
      redis.call('ZREM', KEYS[7], id)
      local tk = ARGV[1] .. id
      local st = redis.call('HGET', tk, 'st')
      if st == code then
        redis.call('DEL', tk)
        deleted = deleted + 1
        gone(id)
      elseif not st then
        gone(id)
      end
    end
  end
  complete = drain(KEYS[6], finished())
  complete = drain(KEYS[7], finished()) and complete
end
if not complete and deleted < limit then out[1] = '1' end
out[2] = deleted
return out
