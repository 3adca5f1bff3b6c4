-- KEYS: ready, sched, leases, seq, sl. ARGV: task key prefix, limit.
-- Returns: number of expired leases (up to limit), then the first `limit` ready members.
SL = KEYS[5]
local now = now_s()
promote(now)
local limit = tonumber(ARGV[2])
local expired = redis.call('ZCOUNT', KEYS[3], '-inf', now)
if expired > limit then expired = limit end
local out = {expired}
local heads = redis.call('ZRANGE', KEYS[1], 0, limit - 1)
for _, m in ipairs(heads) do out[#out + 1] = m end
return out
