-- KEYS: sched, leases, seq, done:s, done:f, done:c, ck, sl, pk, run, fin:s, fin:f, fin:c,
--       migration state (a hash), concurrency keys left to look at (a set)
-- ARGV: task key prefix, most entries to look at in this call
-- Enters in the listing indexes the tasks of one queue that a version before them stored:
-- each finished task of `done:s|f|c` in its `fin` set by -finished_at, each running task of
-- `leases` in `run` by started_at, each scheduled task of `sched` in `sl` under its rank (one
-- is made now, with the next sequence number, for a task that has none: the rank it would get
-- when it falls due) and each parked task of the `ck:w:<key>` sets in `pk` under its rank.
-- Phases 1-3 scan the done sets, 4 the leases, 5 sched, 6 copies the concurrency keys to the
-- set left to look at, 7 scans each of their parked sets; 8 is done. The state hash keeps the
-- phase and the scan cursors, so that the next call goes on where this one stopped (a scan
-- returns every entry that stays in the set from start to end; one that leaves it meanwhile
-- was settled, claimed or let out by steps that index what they move). Every write is
-- idempotent (`NX`, a rank made once), so a call run again changes nothing.
-- Returns: 1 when the queue is done (else 0), the number of index entries added.
local budget = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[14], 'ph', 'c', 'kc')
local phase = tonumber(state[1]) or 1
local cursor = state[2] or '0'
local kc = state[3] or '0'
local added = 0
local seen = 0
local function index(id)
  local tk = ARGV[1] .. id
  if phase <= 3 then
    local h = redis.call('HMGET', tk, 'st', 'fa')
    if h[1] == tostring(phase + 1) and tonumber(h[2]) then
      return redis.call('ZADD', KEYS[10 + phase], 'NX', -tonumber(h[2]), id)
    end
  elseif phase == 4 then
    local h = redis.call('HMGET', tk, 'st', 'sa')
    if h[1] == '1' and tonumber(h[2]) then
      return redis.call('ZADD', KEYS[10], 'NX', h[2], id)
    end
  else
    local h = redis.call('HMGET', tk, 'st', 'pri', 'eta', 'rk')
    if h[1] == '0' then
      local r = h[4]
      if not r then
        r = rank(tonumber(h[2]), tonumber(h[3]), redis.call('INCR', KEYS[3]), id)
        redis.call('HSET', tk, 'rk', r)
      end
      return redis.call('ZADD', KEYS[8], 'NX', 0, r)
    end
  end
  return 0
end
local sources = {KEYS[4], KEYS[5], KEYS[6], KEYS[2], KEYS[1]}
while seen < budget and phase < 8 do
  -- each call counts once too, so that scans of sparse sets stay bounded
  seen = seen + 1
  if phase <= 5 then
    local got = redis.call('ZSCAN', sources[phase], cursor, 'COUNT', budget)
    cursor = got[1]
    for j = 1, #got[2], 2 do
      seen = seen + 1
      added = added + index(got[2][j])
    end
    if cursor == '0' then phase = phase + 1 end
  elseif phase == 6 then
    local got = redis.call('SSCAN', KEYS[7], cursor, 'COUNT', budget)
    cursor = got[1]
    for _, key in ipairs(got[2]) do
      seen = seen + 1
      redis.call('SADD', KEYS[15], key)
    end
    if cursor == '0' then phase = 7 end
  else
    local key = redis.call('SRANDMEMBER', KEYS[15])
    if not key then
      phase = 8
    else
      local got = redis.call('ZSCAN', KEYS[7] .. ':w:' .. key, kc, 'COUNT', budget)
      kc = got[1]
      for j = 1, #got[2], 2 do
        seen = seen + 1
        local m = got[2][j]
        local h = redis.call('HMGET', ARGV[1] .. string.sub(m, 35), 'st', 'rk')
        if h[1] == '0' and h[2] == m then
          added = added + redis.call('ZADD', KEYS[9], 'NX', 0, m)
        end
      end
      if kc == '0' then redis.call('SREM', KEYS[15], key) end
    end
  end
end
redis.call('HSET', KEYS[14], 'ph', phase, 'c', cursor, 'kc', kc)
if phase == 8 then return {1, added} end
return {0, added}
