local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000, t
end
local function rank(pri, eta, seq, id)
  -- A damaged record's priority or ETA (missing, not a number) must not stop the script: it
  -- ranks as 0 and its claim reports the field (see `take`).
  pri = tonumber(pri)
  if not pri or pri ~= pri or pri > 2147483647 or pri < -2147483648 then pri = 0 end
  eta = tonumber(eta) or 0
  if eta ~= eta then eta = 0 end
  pri = math.floor(pri)
  local us = math.floor(eta * 1000000)
  if us < 0 then us = 0 end
  if us > 9007199254740991 then us = 9007199254740991 end
  return string.format('%08x%014x%012x', 2147483647 - pri, us, seq) .. id
end
