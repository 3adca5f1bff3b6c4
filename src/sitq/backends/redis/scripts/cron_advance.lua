-- KEYS: crons, advance record (per request). ARGV: name, expected, tick.
-- Compare-and-set of the last tick; 1 if set. A success is recorded for 10 s so that a retry
-- whose first reply was lost still gets its yes (and no other caller can get one).
if redis.call('GET', KEYS[2]) then return 1 end
local last = redis.call('HGET', KEYS[1], 't:' .. ARGV[1])
if not last or tonumber(last) ~= tonumber(ARGV[2]) then return 0 end
if redis.call('HEXISTS', KEYS[1], 'd:' .. ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 't:' .. ARGV[1], ARGV[3])
redis.call('SET', KEYS[2], 1, 'PX', 10000)
return 1
