-- KEYS: the store's format version. ARGV: a format version.
-- Raises the version to ARGV[1], never lowers it (a client of an older version may finish its
-- migration after a newer one). Returns the version now stored.
local v = tonumber(redis.call('GET', KEYS[1])) or 1
local want = tonumber(ARGV[1])
if v < want then
  redis.call('SET', KEYS[1], want)
  return want
end
return v
