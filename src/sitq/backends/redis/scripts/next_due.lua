-- KEYS: sched, leases (as KEYS[2], KEYS[3] for next_due: KEYS[1] is unused)
local _, t = now_s()
return {t[1], t[2], next_due()}
