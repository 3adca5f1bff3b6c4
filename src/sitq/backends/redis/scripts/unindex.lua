-- KEYS: index key (and on a standalone server the task key). ARGV: the entry. Deletes the index
-- entry if it is still that one (and the task is gone).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
return redis.call('DEL', KEYS[1])
