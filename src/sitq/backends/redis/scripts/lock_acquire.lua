-- KEYS: lock. ARGV: token, TTL in milliseconds. Takes a free lock (an expired one is gone:
-- Redis expires the key on its own clock). The token that holds it gets yes too, so a retry
-- after a lost reply is not taken for a refusal.
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
