-- KEYS: leases (names the queue's slot). ARGV: task key prefix, then per update: id, fencing
-- token, progress, message ('' for none, else '=' and the text).
-- Stores each running task's progress if the token is still its claim's (a stale claim's
-- progress is dropped). Returns the number stored.
local stored = 0
for i = 2, #ARGV, 4 do
  local tk = ARGV[1] .. ARGV[i]
  local h = redis.call('HMGET', tk, 'st', 'fence')
  if h[1] == '1' and h[2] == ARGV[i + 1] then
    redis.call('HSET', tk, 'pg', ARGV[i + 2])
    if ARGV[i + 3] == '' then
      redis.call('HDEL', tk, 'pm')
    else
      redis.call('HSET', tk, 'pm', string.sub(ARGV[i + 3], 2))
    end
    stored = stored + 1
  end
end
return stored
