-- KEYS: locks, in the order to try them. ARGV: token, TTL in milliseconds. Takes the first
-- free lock (an expired one is gone: Redis expires the key on its own clock) and answers its
-- position (from 1); a lock the token already holds answers so too, so a retry after a lost
-- reply takes no second lock. When every lock is held: {0, milliseconds until the first
-- frees}.
local free = 0
local first = -1
for i, key in ipairs(KEYS) do
  local held = redis.call('GET', key)
  if held == ARGV[1] then return {i, 0} end
  if not held then
    if free == 0 then free = i end
  else
    local left = redis.call('PTTL', key)
    if left >= 0 and (first < 0 or left < first) then first = left end
  end
end
if free > 0 then
  redis.call('SET', KEYS[free], ARGV[1], 'PX', ARGV[2])
  return {free, 0}
end
return {0, math.max(first, 0)}
