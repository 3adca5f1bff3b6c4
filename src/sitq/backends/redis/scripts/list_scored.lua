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
local lo, skip = '-inf', 0
if ARGV[5] ~= '' then
  lo = ARGV[5]
  -- ties at the position's score: pass over those up to its id
  for _, m in ipairs(redis.call('ZRANGE', KEYS[1], lo, lo, 'BYSCORE')) do
    if lex_lt(ARGV[6], m) then break end
    skip = skip + 1
  end
end
local function valid(h)
  if h[1] ~= code then return false end
  return code == '1' or (h[3] ~= false and tonumber(h[3]) > now)
end
local out = {''}
local stale = {}
local found, scanned, last = 0, 0, nil
local off = skip
local exhausted = false
while found < limit and scanned < cap do
  local want = math.min(limit - found, cap - scanned)
  local got = redis.call('ZRANGE', KEYS[1], lo, '+inf', 'BYSCORE', 'LIMIT', off, want,
                         'WITHSCORES')
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
  local n = redis.call('ZRANGE', KEYS[1], lo, '+inf', 'BYSCORE', 'LIMIT', off, 1)
  if #n > 0 then out[1] = last end
end
for _, id in ipairs(stale) do redis.call('ZREM', KEYS[1], id) end
return out
