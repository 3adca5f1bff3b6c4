-- A key of a queue, in that queue's slot (ARGV[4] is the backend's key prefix).
local function queue_key(queue, part)
  return ARGV[4] .. ':{' .. ARGV[4] .. ':' .. queue .. '}:' .. part
end
-- What the id index says of storing the explicit id `id` on `queue`, for an id of `kind` '0'
-- (a standalone server: the script checks and sets the index entry `ik`) or '<claim ms>
-- <token>' (a Redis Cluster: the caller holds the entry under that token; see claim_index.lua).
-- nil: go on (on a server the entry now names `queue`); '0': the id is alive on the queue the
-- entry names; 'S': the claim is older than the claim window; 'F': its token was fenced by a
-- takeover.
local function id_verdict(kind, ik, queue, id, now_ms)
  if kind == '0' then
    local owner = redis.call('GET', ik)
    if owner and owner ~= queue and redis.call('EXISTS', queue_key(owner, 't:' .. id)) == 1 then
      return '0'
    end
    redis.call('SET', ik, queue)
    return nil
  end
  local claimed, token = string.match(kind, '^(%d+) (.*)$')
  if now_ms - tonumber(claimed) > 60000 then -- the claim window (CLAIM_WINDOW_MS)
    return 'S'
  elseif redis.call('SISMEMBER', queue_key(queue, 'f:' .. id), token) == 1 then
    return 'F'
  end
  return nil
end
