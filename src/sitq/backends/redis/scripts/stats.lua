-- KEYS: ready, sched, leases, done:s, done:f, done:c, ck. Returns the counts of QueueStats
-- (parked tasks are pending).
local now = now_s()
local after = '(' .. string.format('%.17g', now)
local parked = 0
for _, ck in ipairs(redis.call('SMEMBERS', KEYS[7])) do
  parked = parked + redis.call('ZCARD', KEYS[7] .. ':w:' .. ck)
end
return {
  redis.call('ZCARD', KEYS[1]) + redis.call('ZCOUNT', KEYS[2], '-inf', now) + parked,
  redis.call('ZCOUNT', KEYS[2], after, '+inf'),
  redis.call('ZCARD', KEYS[3]),
  redis.call('ZCOUNT', KEYS[4], after, '+inf'),
  redis.call('ZCOUNT', KEYS[5], after, '+inf'),
  redis.call('ZCOUNT', KEYS[6], after, '+inf'),
}
