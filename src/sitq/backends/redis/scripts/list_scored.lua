-- KEYS: a listing set scored by time (`run`, or a `fin` set). ARGV: task key prefix, limit, most
-- entries to look at, the status code listed, the position to list after (score and id, or ''
-- and '' from the start), then the fields of a row.
-- Lists in (score, id) order. An entry counts only while its task has that status (and, when
-- finished, an unexpired result); an entry whose task is gone or elsewhere is removed.
-- Returns the position up to which the set was read ('' if nothing follows: else the score and
-- the id, space-separated), then per row: its score, the id, the fields.
FIELDS = 7
local limit = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local code = ARGV[4]
local now = now_s()
-- The index of the first entry after the position: the rank after its own entry if that is
-- still there, else (the task left this status) a binary search among the entries that share
-- its score (one claim or settle gives many tasks one time), each step O(log N).
local start = 0
if ARGV[5] ~= '' then
  local s, id = ARGV[5], ARGV[6]
  local own = redis.call('ZSCORE', KEYS[1], id)
  if own and tonumber(own) == tonumber(s) then
    start = redis.call('ZRANK', KEYS[1], id) + 1
  else
    local lo = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. s)
    local hi = lo + redis.call('ZCOUNT', KEYS[1], s, s)
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      local m = redis.call('ZRANGE', KEYS[1], mid, mid)[1]
      if lex_lt(id, m) then hi = mid else lo = mid + 1 end
    end
    start = lo
  end
end
local function valid(h)
  if h[1] ~= code then return false end
  return code == '1' or (h[3] ~= false and tonumber(h[3]) > now)
end
local out = {''}
local stale = {}
local found, scanned, last = 0, 0, nil
local off = start
local exhausted = false
while found < limit and scanned < cap do
  local want = math.min(limit - found, cap - scanned)
  local got = redis.call('ZRANGE', KEYS[1], off, off + want - 1, 'WITHSCORES')
  off = off + #got / 2
  for j = 1, #got, 2 do
    scanned = scanned + 1
    last = got[j + 1] .. ' ' .. got[j]
    if add_row(out, got[j + 1], got[j], valid) then
      found = found + 1
    elseif redis.call('EXISTS', ARGV[1] .. got[j]) == 0 or code == '1' then
      stale[#stale + 1] = got[j]
    end
  end
  if #got < want * 2 then
    exhausted = true
    break
  end
end
if not exhausted and last then
  local n = redis.call('ZRANGE', KEYS[1], off, off)
  if #n > 0 then out[1] = last end
end
for _, id in ipairs(stale) do redis.call('ZREM', KEYS[1], id) end
return out
