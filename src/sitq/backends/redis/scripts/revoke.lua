-- KEYS: task key, fence key (of one id on one queue). ARGV: token, claim ms of the index entry.
-- 1 if the task exists; else 0, after fencing the token if its claim may still be in flight.
-- A claim younger than 600000 ms (FENCE_MS) is fenced, for that long: longer than the claim
-- window of enqueue.lua by the clock skew between nodes that is tolerated.
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now - tonumber(ARGV[2]) < 600000 then
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[2], 600000)
end
return 0
