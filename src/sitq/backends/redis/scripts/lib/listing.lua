-- Listings. Members are compared byte by byte, as Redis orders them (Lua's `<` follows the
-- server's locale). ARGV[1] is the task key prefix; the fields a row carries are the ARGV
-- from `FIELDS` on (each script sets it first).
local FIELDS
local function lex_lt(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
-- Appends the row of task `id` at position `key` to `out` if `valid(h)` holds for the task's
-- `st`, `rk` and `ex` fields (h[1..3]); true if it did.
local function add_row(out, key, id, valid)
  local h = redis.call('HMGET', ARGV[1] .. id, 'st', 'rk', 'ex', unpack(ARGV, FIELDS))
  if not valid(h) then return false end
  out[#out + 1] = key
  out[#out + 1] = id
  for j = 4, #h do out[#out + 1] = h[j] end
  return true
end
