-- KEYS: crons. ARGV: name, definition, start. A schedule is two fields of the crons hash:
-- `d:<name>` (its definition) and `t:<name>` (its last tick). A new one starts at `start`; a
-- replaced one keeps its last tick.
redis.call('HSET', KEYS[1], 'd:' .. ARGV[1], ARGV[2])
redis.call('HSETNX', KEYS[1], 't:' .. ARGV[1], ARGV[3])
return 1
