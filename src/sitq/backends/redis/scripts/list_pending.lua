-- KEYS: ready, sl, pk. ARGV: task key prefix, limit, most entries to look at, the rank to list
-- after ('' from the start), then the fields of a row.
-- Lists pending tasks in the order workers take them: the three sets hold ranks (priority,
-- due time, enqueue order, id; see _keys.py) and are merged. An entry counts only while its
-- task is pending under that very rank (a stale one is passed over).
-- Returns the position up to which the sets were read ('' if nothing follows), then per row:
-- its rank, the id, the fields.
FIELDS = 5
local limit = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local lo = '-'
if ARGV[4] ~= '' then lo = '(' .. ARGV[4] end
local sources = {}
for k = 1, 3 do sources[k] = {key = KEYS[k], buf = {}, pos = 1, off = 0, done = false} end
local function head(s)
  if s.pos > #s.buf then
    if s.done then return nil end
    local want = limit + 1
    s.buf = redis.call('ZRANGE', s.key, lo, '+', 'BYLEX', 'LIMIT', s.off, want)
    s.off = s.off + #s.buf
    s.pos = 1
    if #s.buf < want then s.done = true end
    if #s.buf == 0 then return nil end
  end
  return s.buf[s.pos]
end
local function next_member()
  local best, bm = nil, nil
  for k = 1, 3 do
    local m = head(sources[k])
    if m and (bm == nil or lex_lt(m, bm)) then best, bm = k, m end
  end
  if best then sources[best].pos = sources[best].pos + 1 end
  return bm
end
local out = {''}
local found, scanned, last = 0, 0, nil
while found < limit and scanned < cap do
  local m = next_member()
  if not m then break end
  scanned = scanned + 1
  last = m
  if add_row(out, m, string.sub(m, 35), function(h) return h[1] == '0' and h[2] == m end) then
    found = found + 1
  end
end
local more = false
for k = 1, 3 do
  if head(sources[k]) then more = true end
end
if more and last then out[1] = last end
return out
