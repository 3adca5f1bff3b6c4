-- On a Redis Cluster an id's index entry and its queue are in different slots, so no script
-- can check the one and write the other. There the entry of an explicit id is the authority:
-- '<queue> <token> <claim ms>'. Only a holder of the entry's token may store the id on its
-- queue (the enqueue script checks the token against the queue's fences for the id and refuses
-- claims older than a minute, CLAIM_WINDOW_MS), and the entry moves to another queue only after a
-- takeover fenced the token on the old queue in the same step that found the id gone there
-- (revoke.lua), by a compare-and-set of the whole entry. (A generated id's entry is the bare queue
-- name: such an id is never enqueued twice.)
--
-- KEYS: index key. ARGV: queue, a new token, the entry to replace ('' for none).
-- Takes the entry if it is absent or equal to the one to replace; renews its claim time if it
-- names this queue. Returns the entry as it is then, and the server's time in milliseconds.
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local v = redis.call('GET', KEYS[1])
local q, token = nil, nil
if v then q, token = string.match(v, '^(%S+) (%S+) %d+$') end
if not v or v == ARGV[3] or (not q and v == ARGV[1]) then
  -- absent, replaced, or a generated id's entry on this queue
  v = ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. now
  redis.call('SET', KEYS[1], v)
elseif q == ARGV[1] then
  v = q .. ' ' .. token .. ' ' .. now
  redis.call('SET', KEYS[1], v)
end
return {v, now}
