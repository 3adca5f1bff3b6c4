-- KEYS: leases, ck, run. ARGV: task key prefix, lease seconds, then (id, fence) pairs.
-- A held task claimed before `run` was kept is entered in it here (by its start), so that it
-- is listed among the running tasks from its first lease extension on.
-- Returns one character per pair: 0 lost, 1 held, 2 held with cancel requested.
-- A keyed task whose lease has lapsed is lost: its slot may belong to another task now.
local now = now_s()
local lu = now + tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV, 2 do
  local tk = ARGV[1] .. ARGV[i]
  local h = redis.call('HMGET', tk, 'st', 'fence', 'cr', 'ck', 'lu', 'sa')
  -- A keyed task's lapsed lease gave up its slot, which another task may hold now.
  if h[1] == '1' and h[2] == ARGV[i + 1] and not (h[4] and tonumber(h[5]) <= now) then
    redis.call('HSET', tk, 'lu', lu)
    redis.call('ZADD', KEYS[1], lu, ARGV[i])
    if h[4] then redis.call('ZADD', KEYS[2] .. ':r:' .. h[4], lu, ARGV[i]) end
    if h[6] then redis.call('ZADD', KEYS[3], 'NX', h[6], ARGV[i]) end
    if h[3] == '1' then out[#out + 1] = '2' else out[#out + 1] = '1' end
  else
    out[#out + 1] = '0'
  end
end
return table.concat(out)
