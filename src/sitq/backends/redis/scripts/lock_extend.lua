-- KEYS: lock. ARGV: token, TTL in milliseconds. Extends the lock only for its holder.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
