"""The Redis backend, on redis-py's asyncio client: many workers on many hosts share one server
(or one Redis Cluster).

Design:

* Every key of one queue shares the hash tag ``{<prefix>:<queue>}``, so each Lua script touches
  one slot and the backend works unchanged on Redis Cluster. Per queue:

  - ``<prefix>:{<prefix>:<queue>}:t:<id>``: the task, one hash (payload stored once; dropped
    when the task finishes). A finished task's hash gets a TTL (``PEXPIREAT``) of its
    ``result_ttl``: the result is the same key, and Redis removes it on time.
  - ``...:ready``: due pending tasks, a sorted set whose members all have score 0 and sort
    *by member*: ``%08x`` of ``2**31-1 - priority``, ``%014x`` of the ETA in microseconds,
    ``%012x`` of a per-queue sequence number, then the id. Lexicographic order is then exactly
    (priority desc, ETA, enqueue order), with no 53-bit limit of a double score.
  - ``...:sched``: pending tasks whose ETA is in the future, scored by ETA; a claim moves the
    due ones to ``ready`` first.
  - ``...:leases``: running tasks scored by lease expiry; a claim takes expired ones over.
  - ``...:seq`` (the sequence counter) and ``...:done:s|f|c`` (finished tasks by status,
    scored by result expiry; stats count them and ``purge_expired`` trims them).
  - ``...:ck:r:<key>`` and ``...:ck:w:<key>``: per concurrency key, its running tasks scored
    by lease expiry and its parked tasks (popped from ``ready`` while the key was full, moved
    back when a settle or cancel frees a slot); ``...:ck`` lists the keys with parked tasks.

* Cron schedules are one hash (``<prefix>:{<prefix>:crons}``) and each lock one key
  (``<prefix>:lock:<name>``, the owner's token with a TTL kept by the server).

* Each state change is one Lua script in the queue's slot, called with ``EVALSHA`` (reloaded
  on ``NOSCRIPT``, so a ``SCRIPT FLUSH`` or a restarted server costs one extra round trip):
  enqueue (with the idempotency check), claim (lease, attempts, fencing token), extend, settle
  (finish / reschedule / release, each fenced), cancel, stats, purge; likewise each cron and
  lock step, in its own slot. Times come from the server's ``TIME``, so workers with skewed
  clocks agree on leases.
* ``get_task`` and ``cancel`` receive only an id: ``<prefix>:id:<id>`` (its own slot) names the
  task's queue. On a standalone server the enqueue script writes the entry with the task, and
  for an explicit id first checks that the queue the entry names does not hold the id still:
  one atomic step, so two clients enqueueing one id on two queues store it once. In a cluster
  (where the entry's slot is elsewhere) a generated id's entry is written just before the
  script, and an explicit id's entry is claimed under a token first (see ``_CLAIM_INDEX``):
  the entry is the authority, and moves to another queue only once the old queue has fenced
  the token and lacks the id. ``purge_expired`` removes an entry once the result expired and
  the id is gone from its queue; a stale entry is harmless (the task key is the truth).
  Objects remember the queues of the ids they enqueued or claimed, so the common paths skip
  that lookup.
* A step whose connection failed is retried only where that cannot act twice: claim and settle
  carry a request id whose answer their script keeps for 10 s (a retry after a lost reply gets
  the same answer); enqueue checks that the task does not exist; cancel is not retried.
* Wake-ups use pub/sub: scripts that make tasks due publish on ``<prefix>:work:<queue>``, and
  a finish publishes on ``<prefix>:done:<id>``. One pub/sub connection per backend object,
  re-established with backoff if it drops (every waiter then looks again); a 1 s fallback
  poll covers anything missed, and idle workers also wake at the next ETA or lease expiry
  (which a claim returns, so an idle cycle costs one round trip).
* Standalone servers are reached through one pooled connection kept for whoever comes first
  (the commands of a step are pipelined on it, encoded by sitq, which costs a fraction of
  redis-py's general encoder); concurrent callers use the rest of the pool. With
  ``cluster=True`` redis-py's ``RedisCluster`` routes each script to its slot's node. At most
  ``max_connections`` calls are in flight (one per connection, per node); calls beyond that
  wait, and while they wait they join one batch whose commands go out pipelined together on
  the next connection that frees up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import importlib
import inspect
import logging
import math
import random
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sitq.backends import redact_url, require
from sitq.backends.base import STATUS_CODE, Backend
from sitq.errors import BackendError, ConfigurationError, check_seconds
from sitq.models import (
    CancelOutcome,
    Claim,
    ClaimRef,
    CronRecord,
    Finish,
    LeaseState,
    NewTask,
    QueueStats,
    Release,
    Reschedule,
    Settlement,
    TaskSnapshot,
)

log = logging.getLogger("sitq.redis")

_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_STATUS_CODE = {status: b"%d" % code for status, code in STATUS_CODE.items()}
_CODE_STATUS = {v: k for k, v in _STATUS_CODE.items()}
_LEASE_STATES = (LeaseState.LOST, LeaseState.HELD, LeaseState.CANCEL_REQUESTED)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
_ENQUEUE_CHUNK = 100
_HINTS = 100_000
_RANK_LEN = 34
# At most this many keyed tasks parked by one claim script (each costs a few commands).
_MAX_PARK = 1000
# A claim on several queues plans again when a queue's share was parked instead of taken.
_CLAIM_ROUNDS = 4
# Explicit ids on a Redis Cluster (see _CLAIM_INDEX): an enqueue script refuses a claim of the
# id's index entry older than _CLAIM_WINDOW_MS, and a takeover fences the token of a claim
# younger than _FENCE_MS (for that long). _FENCE_MS exceeds the window by the clock skew
# between nodes that is tolerated.
_CLAIM_WINDOW_MS = 60_000
_FENCE_MS = 600_000
# Rounds of claim / enqueue / takeover an explicit id on a Redis Cluster may take.
_CLAIM_TRIES = 30
# A claim on another queue younger than this is likely still enqueueing: look again once,
# after a pause, before fencing it.
_FRESH_MS = 1000
# Calls that wait for a connection share a round trip, up to about this many commands.
_BATCH_COMMANDS = 1000

# -- Lua ---------------------------------------------------------------------------------------

_LUA_COMMON = """
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
"""

# Puts a pending task (hash fields already set) in `ready` or `sched`. KEYS[1..4] must be
# ready, sched, leases, seq.
_LUA_REQUEUE = """
local function requeue(tk, id, pri, eta, now)
  if eta <= now then
    local r = rank(pri, eta, redis.call('INCR', KEYS[4]), id)
    redis.call('ZADD', KEYS[1], 0, r)
    redis.call('HSET', tk, 'rk', r)
  else
    redis.call('ZADD', KEYS[2], eta, id)
    redis.call('HDEL', tk, 'rk')
  end
end
local function promote(now)
  local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do
    redis.call('ZREM', KEYS[2], id)
    local tk = ARGV[1] .. id
    local h = redis.call('HMGET', tk, 'st', 'pri', 'eta')
    if h[1] == '0' then requeue(tk, id, tonumber(h[2]), tonumber(h[3]) or now, now) end
  end
end
local function next_due()
  local a = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  local b = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  local d = nil
  if a[2] then d = tonumber(a[2]) end
  if b[2] then
    local x = tonumber(b[2])
    if d == nil or x < d then d = x end
  end
  if d == nil then return '' end
  return string.format('%.17g', d)
end
"""

# KEYS: ready, sched, seq, done:s, done:f, done:c, then (on a standalone server only) the id
#       index key of each task, in order
# ARGV: task key prefix, work channel, queue, key prefix, then per task (9 values): id, kind,
#       priority, eta ('' = now), payload, options, result_ttl, concurrency key, limit
# The kind of an id is '1' (generated), '0' (explicit, on a standalone server: the script
# decides with the id index) or '<claim ms> <token>' (explicit, on a Redis Cluster: the caller
# holds the id's index entry under that token, claimed at that time; see _CLAIM_INDEX).
# Returns one character per task: '1' stored, '0' already known (here or on the queue the
# index names), and on a cluster 'F' (the token was fenced by a takeover) or 'S' (the claim
# is too old): claim the index entry again.
_ENQUEUE = (
    _LUA_COMMON
    + """
local now = now_s()
local now_ms = math.floor(now * 1000)
local out = {}
local ready = {}
local added = 0
local n = (#ARGV - 4) / 9
local indexed = #KEYS > 6
local function queue_key(queue, part)
  return ARGV[4] .. ':{' .. ARGV[4] .. ':' .. queue .. '}:' .. part
end
-- sequence numbers for the whole call at once (unused ones are simply skipped)
local seq = redis.call('INCRBY', KEYS[3], n) - n
for i = 5, #ARGV, 9 do
  local id = ARGV[i]
  local kind = ARGV[i + 1]
  local tk = ARGV[1] .. id
  local verdict = nil
  if kind == '1' then
    -- a generated id is indexed with its task
    if indexed then redis.call('SET', KEYS[7 + (i - 5) / 9], ARGV[3]) end
  elseif kind == '0' then
    -- An explicit id still known on the queue its index entry names is left alone; else
    -- the entry names this queue, in the same step as the check (known here or stored).
    local ik = KEYS[7 + (i - 5) / 9]
    local owner = redis.call('GET', ik)
    if owner and owner ~= ARGV[3] and redis.call('EXISTS', queue_key(owner, 't:' .. id)) == 1 then
      verdict = '0'
    else
      redis.call('SET', ik, ARGV[3])
    end
  else
    local claimed, token = string.match(kind, '^(%d+) (.*)$')
    if now_ms - tonumber(claimed) > """
    + str(_CLAIM_WINDOW_MS)
    + """ then
      verdict = 'S'
    elseif redis.call('SISMEMBER', queue_key(ARGV[3], 'f:' .. id), token) == 1 then
      verdict = 'F'
    end
  end
  if verdict then
    out[#out + 1] = verdict
  elseif redis.call('EXISTS', tk) == 1 then
    -- a generated id can only exist if an earlier attempt of this very call stored it
    if kind == '1' then out[#out + 1] = '1' else out[#out + 1] = '0' end
  else
    if kind ~= '1' then
      -- an explicit id whose earlier result expired: forget its old entry
      redis.call('ZREM', KEYS[4], id)
      redis.call('ZREM', KEYS[5], id)
      redis.call('ZREM', KEYS[6], id)
    end
    local eta = now
    if ARGV[i + 3] ~= '' then eta = tonumber(ARGV[i + 3]) end
    local r = ''
    if eta <= now then
      seq = seq + 1
      r = rank(tonumber(ARGV[i + 2]), eta, seq, id)
      ready[#ready + 1] = 0
      ready[#ready + 1] = r
    else
      redis.call('ZADD', KEYS[2], eta, id)
    end
    if r ~= '' then
      redis.call('HSET', tk, 'st', 0, 'pri', ARGV[i + 2], 'eta', eta, 'pl', ARGV[i + 4],
                 'op', ARGV[i + 5], 'ttl', ARGV[i + 6], 'enq', now, 'rk', r)
    else
      redis.call('HSET', tk, 'st', 0, 'pri', ARGV[i + 2], 'eta', eta, 'pl', ARGV[i + 4],
                 'op', ARGV[i + 5], 'ttl', ARGV[i + 6], 'enq', now)
    end
    if ARGV[i + 7] ~= '' then redis.call('HSET', tk, 'ck', ARGV[i + 7], 'cl', ARGV[i + 8]) end
    out[#out + 1] = '1'
    added = added + 1
  end
end
if #ready > 0 then redis.call('ZADD', KEYS[1], unpack(ready)) end
if added > 0 then redis.call('PUBLISH', ARGV[2], '') end
return table.concat(out)
"""
)

# Concurrency keys. `CK` (a local each script sets to its `ck` key) is the set of keys that
# have parked tasks; per key, `CK:r:<key>` holds the running tasks scored by lease expiry and
# `CK:w:<key>` the parked ones: their ready members, scored by their concurrency limit.
_LUA_KEYED = """
local function running(ck, now)
  return redis.call('ZCOUNT', CK .. ':r:' .. ck, '(' .. string.format('%.17g', now), '+inf')
end
local function park(tk, ck, limit, r)
  redis.call('ZADD', CK .. ':w:' .. ck, limit, r)
  redis.call('SADD', CK, ck)
  redis.call('HSET', tk, 'rk', r)
end
-- Moves parked tasks of `ck` back to `ready` while, counting them, they fit under their own
-- limit (lowest limits first, then in queue order); the claim checks each again.
local function unpark(ready, ck, now)
  local wk = CK .. ':w:' .. ck
  local busy = running(ck, now)
  local moved = 0
  while true do
    local m = redis.call('ZRANGEBYSCORE', wk, '(' .. (busy + moved), '+inf', 'LIMIT', 0, 1)
    if #m == 0 then break end
    redis.call('ZREM', wk, m[1])
    redis.call('ZADD', ready, 0, m[1])
    moved = moved + 1
  end
  if redis.call('EXISTS', wk) == 0 then redis.call('SREM', CK, ck) end
  return moved
end
"""

# KEYS: ready, sched, leases, seq, claim record (a list, per claim request), ck
# ARGV: task key prefix, limit, lease seconds, worker id, work channel
# Returns: TIME seconds, TIME microseconds, next due time ('' if none), the number of tasks
#          parked by this call, then per claim four strings: id, payload, options, and "fence
#          attempts priority retries enqueued_at ttl cancel eta" (few reply elements parse much
#          faster than many).
# The claim record lists what the request claimed, for 10 s: a retry of a request whose reply
# was lost hands out the same claims again instead of taking more tasks.
# A keyed task whose key is full is parked (see _LUA_KEYED) instead of being handed out, and
# the claim goes on with the tasks behind it; at most _MAX_PARK per call, so that one script
# never blocks the server for long (it then reports work due now and publishes a wake-up).
_CLAIM = (
    _LUA_COMMON
    + """
local CK = KEYS[6]
"""
    + _LUA_REQUEUE
    + _LUA_KEYED
    + """
local now, t = now_s()
local out = {t[1], t[2], '', 0}
local record = redis.call('LRANGE', KEYS[5], 0, -1)
if #record > 0 then
  for j = 1, #record, 2 do
    local id = record[j]
    local h = redis.call('HMGET', ARGV[1] .. id, 'st', 'fence', 'att', 'pl', 'op', 'pri', 'ret',
                         'enq', 'ttl', 'cr', 'eta')
    if h[1] == '1' and h[2] == record[j + 1] then
      out[#out + 1] = id
      out[#out + 1] = h[4]
      out[#out + 1] = h[5]
      out[#out + 1] = table.concat({h[2], h[3], h[6] or '?', h[7] or '0', h[8] or '?',
                                    h[9] or '?', h[10] or '0', h[11] or '?'}, ' ')
    end
  end
  out[3] = next_due()
  return out
end
promote(now)
local limit = tonumber(ARGV[2])
local lease_until = now + tonumber(ARGV[3])
local n = 0
local parked = 0
local function take(id, tk, ck)
  -- A fencing token or attempt count that is not an integer (a damaged record) would fail
  -- HINCRBY and end the script halfway: replace it (a token far above any earlier claim's)
  -- and mark it with '?' so that the worker fails the task.
  local fence = redis.pcall('HINCRBY', tk, 'fence', 1)
  local mark = ''
  if type(fence) == 'table' then
    fence = string.format('%d', 1000000000 + redis.call('INCR', KEYS[4]))
    redis.call('HSET', tk, 'fence', fence)
    mark = '?'
  end
  local att = redis.pcall('HINCRBY', tk, 'att', 1)
  if type(att) == 'table' then
    att = '?'
    redis.call('HSET', tk, 'att', 1)
  end
  redis.call('HSET', tk, 'st', 1, 'lu', lease_until, 'wid', ARGV[4], 'sa', now)
  redis.call('HDEL', tk, 'rk')
  redis.call('ZADD', KEYS[3], lease_until, id)
  if ck then redis.call('ZADD', CK .. ':r:' .. ck, lease_until, id) end
  redis.call('RPUSH', KEYS[5], id, fence)
  local h = redis.call('HMGET', tk, 'pl', 'op', 'pri', 'ret', 'enq', 'ttl', 'cr', 'eta')
  out[#out + 1] = id
  out[#out + 1] = h[1]
  out[#out + 1] = h[2]
  out[#out + 1] = table.concat({mark .. fence, att, h[3] or '?', h[4] or '0', h[5] or '?',
                                h[6] or '?', h[7] or '0', h[8] or '?'}, ' ')
  n = n + 1
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(expired) do
  local tk = ARGV[1] .. id
  local h = redis.call('HMGET', tk, 'st', 'ck', 'cl')
  if h[1] ~= '1' then
    redis.call('ZREM', KEYS[3], id)
  elseif h[2] and running(h[2], now) >= (tonumber(h[3]) or 1) then
    -- its worker was lost and its key has filled up meanwhile: pending again, parked
    local p = redis.call('HMGET', tk, 'pri', 'eta')
    redis.call('ZREM', KEYS[3], id)
    redis.call('ZREM', CK .. ':r:' .. h[2], id)
    redis.call('HSET', tk, 'st', 0)
    redis.call('HDEL', tk, 'lu', 'wid')
    park(tk, h[2], tonumber(h[3]) or 1,
         rank(tonumber(p[1]), tonumber(p[2]), redis.call('INCR', KEYS[4]), id))
    parked = parked + 1
  else
    take(id, tk, h[2])
  end
end
while n < limit and parked < tonumber(ARGV[6]) do
  local popped = redis.call('ZPOPMIN', KEYS[1], limit - n)
  if #popped == 0 then break end
  for j = 1, #popped, 2 do
    local id = string.sub(popped[j], 35)
    local tk = ARGV[1] .. id
    local h = redis.call('HMGET', tk, 'st', 'ck', 'cl')
    if h[1] == '0' then
      if h[2] and running(h[2], now) >= (tonumber(h[3]) or 1) then
        park(tk, h[2], tonumber(h[3]) or 1, popped[j])
        parked = parked + 1
      else
        take(id, tk, h[2])
      end
    end
  end
end
if n > 0 then redis.call('PEXPIRE', KEYS[5], 10000) end
out[3] = next_due()
out[4] = parked
if n < limit and parked >= tonumber(ARGV[6]) and redis.call('EXISTS', KEYS[1]) == 1 then
  out[3] = string.format('%.17g', now)
  redis.call('PUBLISH', ARGV[5], '')
end
return out
"""
)

# KEYS: ready, sched, leases, seq. ARGV: task key prefix, limit.
# Returns: number of expired leases (up to limit), then the first `limit` ready members.
_PEEK = (
    _LUA_COMMON
    + _LUA_REQUEUE
    + """
local now = now_s()
promote(now)
local limit = tonumber(ARGV[2])
local expired = redis.call('ZCOUNT', KEYS[3], '-inf', now)
if expired > limit then expired = limit end
local out = {expired}
local heads = redis.call('ZRANGE', KEYS[1], 0, limit - 1)
for _, m in ipairs(heads) do out[#out + 1] = m end
return out
"""
)

# KEYS: sched, leases (as KEYS[2], KEYS[3] for next_due: KEYS[1] is unused)
_NEXT_DUE = (
    _LUA_COMMON
    + _LUA_REQUEUE
    + """
local _, t = now_s()
return {t[1], t[2], next_due()}
"""
)

# KEYS: leases, ck. ARGV: task key prefix, lease seconds, then (id, fence) pairs.
# Returns one character per pair: 0 lost, 1 held, 2 held with cancel requested.
# A keyed task whose lease has lapsed is lost: its slot may belong to another task now.
_EXTEND = (
    _LUA_COMMON
    + """
local now = now_s()
local lu = now + tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV, 2 do
  local tk = ARGV[1] .. ARGV[i]
  local h = redis.call('HMGET', tk, 'st', 'fence', 'cr', 'ck', 'lu')
  -- A keyed task's lapsed lease gave up its slot, which another task may hold now.
  if h[1] == '1' and h[2] == ARGV[i + 1] and not (h[4] and tonumber(h[5]) <= now) then
    redis.call('HSET', tk, 'lu', lu)
    redis.call('ZADD', KEYS[1], lu, ARGV[i])
    if h[4] then redis.call('ZADD', KEYS[2] .. ':r:' .. h[4], lu, ARGV[i]) end
    if h[3] == '1' then out[#out + 1] = '2' else out[#out + 1] = '1' end
  else
    out[#out + 1] = '0'
  end
end
return table.concat(out)
"""
)

# KEYS: ready, sched, leases, seq, done:s, done:f, done:c, settle record (per request), ck
# ARGV: task key prefix, work channel, done channel prefix, then entries:
#   F id fence status(2|3|4) value error traceback ttl   (optional values: '' or '=' .. data)
#   R id fence eta error traceback
#   L id fence
# Returns one character per entry: '1' applied, '0' refused.
# The settle record keeps the request's answer for 10 s, so a retry whose first reply was lost
# gets the same answer (a new request with the same settlements is refused, as it must be).
# Settling a keyed task frees its slot: parked tasks of its key go back to `ready` if they now
# fit, and idle workers are woken.
_SETTLE = (
    _LUA_COMMON
    + """
local CK = KEYS[9]
"""
    + _LUA_REQUEUE
    + _LUA_KEYED
    + """
local previous = redis.call('GET', KEYS[8])
if previous then
  -- a retry of a request that ran: its answer again, nothing applied twice
  return previous
end
local now = now_s()
local out = {}
local work = false
local keys = {}
local function opt(tk, field, v)
  if v == '' then
    redis.call('HDEL', tk, field)
  else
    redis.call('HSET', tk, field, string.sub(v, 2))
  end
end
local i = 4
while i <= #ARGV do
  local kind = ARGV[i]
  local id = ARGV[i + 1]
  local tk = ARGV[1] .. id
  local h = redis.call('HMGET', tk, 'st', 'fence', 'pri', 'eta', 'ck')
  local ok = h[1] == '1' and h[2] == ARGV[i + 2]
  if ok and h[5] then
    redis.call('ZREM', CK .. ':r:' .. h[5], id)
    keys[h[5]] = true
  end
  if kind == 'F' then
    if ok then
      local ex = now + tonumber(ARGV[i + 7])
      local code = tonumber(ARGV[i + 3])
      redis.call('HSET', tk, 'st', code, 'fa', now, 'ex', ex)
      opt(tk, 'v', ARGV[i + 4])
      opt(tk, 'err', ARGV[i + 5])
      opt(tk, 'tb', ARGV[i + 6])
      redis.call('HDEL', tk, 'pl', 'lu', 'wid')
      redis.call('ZREM', KEYS[3], id)
      redis.call('PEXPIREAT', tk, string.format('%d', math.ceil(ex * 1000)))
      redis.call('ZADD', KEYS[3 + code], ex, id)
      redis.call('PUBLISH', ARGV[3] .. id, ARGV[i + 3])
    end
    i = i + 8
  elseif kind == 'R' then
    if ok then
      local eta = tonumber(ARGV[i + 3])
      redis.call('HSET', tk, 'st', 0, 'eta', eta)
      redis.call('HINCRBY', tk, 'ret', 1)
      opt(tk, 'err', ARGV[i + 4])
      opt(tk, 'tb', ARGV[i + 5])
      redis.call('HDEL', tk, 'lu', 'wid')
      redis.call('ZREM', KEYS[3], id)
      requeue(tk, id, tonumber(h[3]), eta, now)
      work = true
    end
    i = i + 6
  else
    if ok then
      redis.call('HSET', tk, 'st', 0)
      redis.call('HINCRBY', tk, 'att', -1)
      redis.call('HDEL', tk, 'lu', 'wid')
      redis.call('ZREM', KEYS[3], id)
      requeue(tk, id, tonumber(h[3]), tonumber(h[4]), now)
      work = true
    end
    i = i + 3
  end
  if ok then out[#out + 1] = '1' else out[#out + 1] = '0' end
end
for ck in pairs(keys) do
  unpark(KEYS[1], ck, now)
  work = true
end
if work then redis.call('PUBLISH', ARGV[2], '') end
local answer = table.concat(out)
redis.call('SET', KEYS[8], answer, 'PX', 10000)
return answer
"""
)

# KEYS: ready, sched, done:c, ck. ARGV: task key prefix, id, done channel prefix, work channel.
# Returns 0 not found, 1 cancelled, 2 cancel requested (running), 3 already finished.
# A cancelled keyed task may have been let out of parking for a slot it now leaves unused: the
# key's parked tasks are looked at again.
_CANCEL = (
    _LUA_COMMON
    + """
local CK = KEYS[4]
"""
    + _LUA_KEYED
    + """
local tk = ARGV[1] .. ARGV[2]
local h = redis.call('HMGET', tk, 'st', 'rk', 'ttl', 'ck')
if not h[1] then return 0 end
if h[1] == '0' then
  local now = now_s()
  if h[2] then redis.call('ZREM', KEYS[1], h[2]) end
  redis.call('ZREM', KEYS[2], ARGV[2])
  if h[4] then
    if h[2] then redis.call('ZREM', CK .. ':w:' .. h[4], h[2]) end
    if unpark(KEYS[1], h[4], now) > 0 then redis.call('PUBLISH', ARGV[4], '') end
  end
  local ex = now + tonumber(h[3])
  redis.call('HSET', tk, 'st', 4, 'err', 'cancelled before it started', 'fa', now, 'ex', ex)
  redis.call('HDEL', tk, 'pl', 'rk', 'v', 'tb')
  redis.call('PEXPIREAT', tk, string.format('%d', math.ceil(ex * 1000)))
  redis.call('ZADD', KEYS[3], ex, ARGV[2])
  redis.call('PUBLISH', ARGV[3] .. ARGV[2], '4')
  return 1
end
if h[1] == '1' then
  redis.call('HSET', tk, 'cr', 1)
  return 2
end
return 3
"""
)

# KEYS: ready, sched, leases, done:s, done:f, done:c, ck. Returns the counts of QueueStats
# (parked tasks are pending).
_STATS = (
    _LUA_COMMON
    + """
local now = now_s()
local after = '(' .. string.format('%.17g', now)
local parked = 0
for _, ck in ipairs(redis.call('SMEMBERS', KEYS[7])) do
  parked = parked + redis.call('ZCARD', KEYS[7] .. ':w:' .. ck)
end
return {
  redis.call('ZCARD', KEYS[1]) + redis.call('ZCOUNT', KEYS[2], '-inf', now) + parked,
  redis.call('ZCOUNT', KEYS[2], after, '+inf'),
  redis.call('ZCARD', KEYS[3]),
  redis.call('ZCOUNT', KEYS[4], after, '+inf'),
  redis.call('ZCOUNT', KEYS[5], after, '+inf'),
  redis.call('ZCOUNT', KEYS[6], after, '+inf'),
}
"""
)

# KEYS: done:s, done:f, done:c. ARGV: limit. Removes (and returns) the ids whose results
# expired; their hashes have expired already (PEXPIREAT).
_PURGE = (
    _LUA_COMMON
    + """
local now = now_s()
local left = tonumber(ARGV[1])
local out = {}
for k = 1, 3 do
  if left <= 0 then break end
  local ids = redis.call('ZRANGEBYSCORE', KEYS[k], '-inf', now, 'LIMIT', 0, left)
  for _, id in ipairs(ids) do
    redis.call('ZREM', KEYS[k], id)
    out[#out + 1] = id
  end
  left = left - #ids
end
return out
"""
)

# On a Redis Cluster an id's index entry and its queue are in different slots, so no script
# can check the one and write the other. There the entry of an explicit id is the authority:
# '<queue> <token> <claim ms>'. Only a holder of the entry's token may store the id on its
# queue (the enqueue script checks the token against the queue's fences for the id and refuses
# claims older than _CLAIM_WINDOW_MS), and the entry moves to another queue only after a
# takeover fenced the token on the old queue in the same step that found the id gone there
# (_REVOKE), by a compare-and-set of the whole entry. (A generated id's entry is the bare queue
# name: such an id is never enqueued twice.)
#
# KEYS: index key. ARGV: queue, a new token, the entry to replace ('' for none).
# Takes the entry if it is absent or equal to the one to replace; renews its claim time if it
# names this queue. Returns the entry as it is then, and the server's time in milliseconds.
_CLAIM_INDEX = """
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
"""

# KEYS: task key, fence key (of one id on one queue). ARGV: token, claim ms of the index entry.
# 1 if the task exists; else 0, after fencing the token if its claim may still be in flight.
_REVOKE = (
    """
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now - tonumber(ARGV[2]) < """
    + str(_FENCE_MS)
    + """ then
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[2], """
    + str(_FENCE_MS)
    + """)
end
return 0
"""
)

# KEYS: index key (and on a standalone server the task key). ARGV: the entry. Deletes the index
# entry if it is still that one (and the task is gone).
_UNINDEX = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
return redis.call('DEL', KEYS[1])
"""

# KEYS: lock. ARGV: token, TTL in milliseconds. Takes a free lock (an expired one is gone:
# Redis expires the key on its own clock). The token that holds it gets yes too, so a retry
# after a lost reply is not taken for a refusal.
_LOCK_ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: lock. ARGV: token, TTL in milliseconds. Extends the lock only for its holder.
_LOCK_EXTEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: lock. ARGV: token. Releases the lock only for its holder.
_LOCK_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS: crons. ARGV: name, definition, start. A schedule is two fields of the crons hash:
# `d:<name>` (its definition) and `t:<name>` (its last tick). A new one starts at `start`; a
# replaced one keeps its last tick.
_CRON_PUT = """
redis.call('HSET', KEYS[1], 'd:' .. ARGV[1], ARGV[2])
redis.call('HSETNX', KEYS[1], 't:' .. ARGV[1], ARGV[3])
return 1
"""

# KEYS: crons, advance record (per request). ARGV: name, expected, tick.
# Compare-and-set of the last tick; 1 if set. A success is recorded for 10 s so that a retry
# whose first reply was lost still gets its yes (and no other caller can get one).
_CRON_ADVANCE = """
if redis.call('GET', KEYS[2]) then return 1 end
local last = redis.call('HGET', KEYS[1], 't:' .. ARGV[1])
if not last or tonumber(last) ~= tonumber(ARGV[2]) then return 0 end
if redis.call('HEXISTS', KEYS[1], 'd:' .. ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 't:' .. ARGV[1], ARGV[3])
redis.call('SET', KEYS[2], 1, 'PX', 10000)
return 1
"""

_SCRIPTS = {
    "enqueue": _ENQUEUE,
    "claim": _CLAIM,
    "peek": _PEEK,
    "next_due": _NEXT_DUE,
    "extend": _EXTEND,
    "settle": _SETTLE,
    "cancel": _CANCEL,
    "stats": _STATS,
    "purge": _PURGE,
    "claim_index": _CLAIM_INDEX,
    "revoke": _REVOKE,
    "unindex": _UNINDEX,
    "lock_acquire": _LOCK_ACQUIRE,
    "lock_extend": _LOCK_EXTEND,
    "lock_release": _LOCK_RELEASE,
    "cron_put": _CRON_PUT,
    "cron_advance": _CRON_ADVANCE,
}


@dataclass(frozen=True, slots=True)
class _QueueKeys:
    """The keys of one queue (all in one hash slot) and its work channel."""

    task: str
    ready: str
    sched: str
    leases: str
    seq: str
    done_s: str
    done_f: str
    done_c: str
    claims: str
    settles: str
    ck: str
    fence: str  # the prefix of the fence keys of explicit ids (Redis Cluster)
    work: str
    index: str  # the prefix of the id index keys (shared by every queue)
    prefix: str  # the backend's key prefix


def _parse_entry(entry: str) -> tuple[str, str, int]:
    """An id index entry's queue, token and claim time in milliseconds: ``<queue> <token>
    <ms>`` for an explicit id on a Redis Cluster, the bare queue name otherwise (no token,
    claimed at 0)."""
    parts = entry.split(" ")
    if len(parts) == 3 and parts[2].isdigit():
        return parts[0], parts[1], int(parts[2])
    return entry, "", 0


def _entry_queue(raw: Any) -> str:
    """The queue an id index entry names."""
    return bytes(raw).split(b" ", 1)[0].decode()


def _opt(value: bytes | str | None) -> bytes:
    """An optional value for a script: ``b""`` for ``None``, else ``b"="`` and the data."""
    if value is None:
        return b""
    if isinstance(value, str):
        value = value.encode()
    return b"=" + value


@dataclass(frozen=True, slots=True)
class _Raw:
    """A command encoded in RESP by ``encode`` (called when it is sent, so that the server can
    run the previous commands meanwhile); ``sha`` names the script it calls, if any."""

    encode: Callable[[], bytes]
    sha: str | None = None


# The nine arguments of one task for the enqueue script, in RESP.
_TASK_RESP = (
    b"$%d\r\n%b\r\n$1\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
    b"$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
)


_Command = tuple[Any, ...] | _Raw


def _sha_of(command: _Command) -> Any:
    """The SHA1 of the script an EVALSHA command calls."""
    return command.sha if isinstance(command, _Raw) else command[1]


def _pack(commands: Sequence[_Command]) -> bytes:
    """Commands in the Redis protocol (RESP). sitq only sends bytes, str, int and float, so
    this is several times cheaper than redis-py's general encoder."""
    buf = bytearray()
    for command in commands:
        if isinstance(command, _Raw):
            buf += command.encode()
            continue
        buf += b"*%d\r\n" % len(command)
        for arg in command:
            kind = type(arg)
            if kind is bytes:
                data = arg
            elif kind is str:
                data = arg.encode()
            elif kind is int:
                data = b"%d" % arg
            elif kind is float:
                data = repr(arg).encode()
            else:  # pragma: no cover - a programming error
                raise TypeError(f"cannot send {arg!r} to Redis")
            buf += b"$%d\r\n%b\r\n" % (len(data), data)
    return bytes(buf)


@functools.lru_cache(maxsize=256)
def _enqueue_head(sha: str, k: _QueueKeys, queue: str) -> tuple[bytes, bytes, bytes]:
    """The fixed parts of a queue's enqueue script call, in RESP: ``EVALSHA`` and the script,
    the six queue keys, and the four leading arguments."""
    return (
        _pack([("EVALSHA", sha)]).split(b"\r\n", 1)[1],
        _pack([(k.ready, k.sched, k.seq, k.done_s, k.done_f, k.done_c)]).split(b"\r\n", 1)[1],
        _pack([(k.task, k.work, queue, k.prefix)]).split(b"\r\n", 1)[1],
    )


def _encode_enqueue(sha: str, k: _QueueKeys, chunk: Sequence[NewTask]) -> bytes:
    """The enqueue script call for a chunk of tasks of one queue on a standalone server, in
    RESP, encoded in one pass (encoding the arguments one by one took most of an enqueue's
    client time), with each task's id index key for the script to set (or, for an explicit
    id, to check and set)."""
    call, keys, argv = _enqueue_head(sha, k, chunk[0].queue)
    nkeys = 6 + len(chunk)
    nk = b"%d" % nkeys
    parts = [b"*%d\r\n" % (2 + 1 + nkeys + 4 + 9 * len(chunk)), call]
    parts += [b"$%d\r\n%b\r\n" % (len(nk), nk), keys]
    for t in chunk:
        key = (k.index + t.id).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(key), key))
    parts.append(argv)
    texts: dict[Any, bytes] = {}
    for t in chunk:
        tid = t.id.encode()
        pri = b"%d" % t.priority
        eta = b"" if t.eta <= t.enqueued_at else repr(float(t.eta)).encode()
        options = texts.get(t.options)
        if options is None:
            options = texts[t.options] = t.options.encode()
        ttl = texts.get(t.result_ttl)
        if ttl is None:
            ttl = texts[t.result_ttl] = repr(float(t.result_ttl)).encode()
        ckey = t.concurrency_key.encode() if t.concurrency_key else b""
        climit = b"" if t.concurrency_limit is None else b"%d" % t.concurrency_limit
        payload = t.payload
        parts.append(
            _TASK_RESP
            % (
                len(tid),
                tid,
                b"1" if t.fresh_id else b"0",
                len(pri),
                pri,
                len(eta),
                eta,
                len(payload),
                payload,
                len(options),
                options,
                len(ttl),
                ttl,
                len(ckey),
                ckey,
                len(climit),
                climit,
            )
        )
    return b"".join(parts)


@dataclass(slots=True)
class _Batch:
    """Calls that found every connection busy: their commands, sent together in one round
    trip, and each caller's slice of the replies."""

    commands: list[_Command] = dataclasses.field(default_factory=list)
    waiters: list[tuple[int, int, asyncio.Future[list[Any]]]] = dataclasses.field(
        default_factory=list
    )


def _millis(seconds: float) -> int:
    """A TTL in whole milliseconds for ``PX``/``PEXPIRE`` (at least 1: 0 is an error)."""
    return max(1, math.ceil(seconds * 1000))


def _text(value: Any) -> str | None:
    return None if value is None else bytes(value).decode()


def _float(value: Any) -> float | None:
    return None if value is None else _stamp(value)


def _stamp(value: Any) -> float:
    """A stored timestamp; NaN where a damaged record holds something else."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


_CLAIM_FIELDS: tuple[tuple[str, Callable[[bytes], float]], ...] = (
    ("attempts", int),
    ("priority", int),
    ("retries", int),
    ("enqueued_at", float),
    ("result_ttl", float),
    ("cancel", float),
    ("eta", float),
)


def _unreadable_claim(task_id: str, queue: str, raw: Sequence[Any], now: float) -> Claim:
    """The claim of a task whose hash the claim script found damaged (a field missing, not a
    number, or a fencing token it had to replace, marked ``?``), naming what is wrong, so that
    the worker fails that task instead of the whole claim failing."""
    payload, options, fields = raw
    tokens = bytes(fields).split(b" ")
    problems = []
    if tokens[0].startswith(b"?"):
        problems.append("the fencing token was not an integer")
    fence = int(tokens[0].lstrip(b"?"))  # the script always hands out an integer token
    if len(tokens) != 8:
        problems.append("its fields cannot be read")
    values = tokens[1:] if len(tokens) == 8 else []
    for (name, kind), text in zip(_CLAIM_FIELDS, values, strict=False):
        try:
            kind(text)
        except ValueError:
            shown = "missing or not a number" if text == b"?" else f"{text!r}, not a number"
            problems.append(f"{name} is {shown}")
    if payload is None:
        problems.append("the payload is missing")
    if options is None:
        problems.append("the options are missing")
    else:
        try:
            bytes(options).decode()
        except UnicodeDecodeError:
            problems.append("the options are not text")
    return Claim(
        task_id=task_id,
        queue=queue,
        payload=b"" if payload is None else bytes(payload),
        options="",
        priority=0,
        fencing_token=fence,
        attempts=1,
        retries=0,
        enqueued_at=math.nan,
        started_at=now,
        result_ttl=math.nan,
        corrupt="; ".join(problems) or "its fields cannot be read",
    )


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigurationError(f"{name}={value!r} is not a boolean: use true or false")


def _url_options(url: str) -> tuple[str, dict[str, Any]]:
    """Split sitq's own options out of a Redis URL's query: the URL for redis-py, and them."""
    try:
        parts = urlsplit(url)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
    except ValueError as exc:
        raise ConfigurationError(f"{redact_url(url)} is not a valid URL: {exc}") from exc
    options: dict[str, Any] = {}
    if "prefix" in params:
        options["prefix"] = params.pop("prefix")
    if "cluster" in params:
        options["cluster"] = _parse_bool("cluster", params.pop("cluster"))
    for key in ("command_timeout", "connect_timeout"):
        if key in params:
            try:
                options[key] = float(params.pop(key))
            except ValueError:
                raise ConfigurationError(f"{key} must be a number in {redact_url(url)}") from None
    if "max_connections" in params:
        try:
            options["max_connections"] = int(params.pop("max_connections"))
        except ValueError:
            raise ConfigurationError(
                f"max_connections must be a whole number in {redact_url(url)}"
            ) from None
    if not options:
        return url, options
    return urlunsplit(parts._replace(query=urlencode(params))), options


class RedisBackend(Backend):
    """Tasks in Redis (standalone, or a Redis Cluster with ``cluster=True``).

    ``host``/``port``/``db`` (or ``url``, e.g. ``redis://:password@host:6379/0`` or
    ``rediss://...``, whose query may carry the options ``from_url`` reads) say where the
    server is; ``prefix`` starts every key and channel name,
    so several applications can share one server. ``cluster=True`` talks to a Redis Cluster
    (``host``/``port`` or the URL name any node). ``command_timeout`` bounds each call to the
    server and ``connect_timeout`` each new connection, in seconds. ``max_connections`` bounds
    the connections one backend object opens to each server for its calls (one more carries its
    pub/sub): calls beyond it wait for a connection to free up. Durability is the server's:
    run it with ``appendonly yes`` (and ``appendfsync always`` for no loss on a crash).
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 6379,
        db: int = 0,
        *,
        url: str | None = None,
        prefix: str = "sitq",
        username: str | None = None,
        password: str | None = None,
        ssl: bool = False,
        cluster: bool = False,
        command_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        max_connections: int = 100,
    ) -> None:
        require("redis", "redis", "RedisBackend")
        self._aioredis: Any = importlib.import_module("redis.asyncio")
        self._exc: Any = importlib.import_module("redis.exceptions")
        if isinstance(url, str):
            # sitq's own options may travel in the URL's query; the rest is redis-py's.
            url, query = _url_options(url)
            given: dict[str, Any] = {
                "prefix": prefix,
                "cluster": cluster,
                "command_timeout": command_timeout,
                "connect_timeout": connect_timeout,
                "max_connections": max_connections,
            }
            for key, value in query.items():
                if given[key] != _URL_DEFAULTS[key] and given[key] != value:
                    raise ConfigurationError(
                        f"{key} is set twice, to {given[key]!r} and to {value!r} in "
                        f"{redact_url(url)}: keep one"
                    )
                given[key] = value
            prefix = given["prefix"]
            cluster = given["cluster"]
            command_timeout = given["command_timeout"]
            connect_timeout = given["connect_timeout"]
            max_connections = given["max_connections"]
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            raise ConfigurationError(
                f"prefix={prefix!r} is not valid: use 1-64 letters, digits or '_', '.', ':', '-'"
            )
        if url is not None:
            if not isinstance(url, str):
                raise ConfigurationError(f"url must be a redis:// or rediss:// URL, not {url!r}")
            scheme = urlsplit(url).scheme.lower()
            if scheme not in ("redis", "rediss"):
                raise ConfigurationError(
                    f"{redact_url(url)} is not a Redis URL: use redis://host:6379/0 or rediss://"
                )
        else:
            if not isinstance(host, str) or not host:
                raise ConfigurationError(f"host must be a non-empty string, not {host!r}")
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise ConfigurationError(f"port must be an int in 1-65535, not {port!r}")
            if isinstance(db, bool) or not isinstance(db, int) or db < 0:
                raise ConfigurationError(f"db must be an int >= 0, not {db!r}")
        for name, value in (
            ("command_timeout", command_timeout),
            ("connect_timeout", connect_timeout),
        ):
            check_seconds(name, value)
        if (
            isinstance(max_connections, bool)
            or not isinstance(max_connections, int)
            or max_connections < 1
        ):
            raise ConfigurationError(
                f"max_connections must be a whole number >= 1, not {max_connections!r}"
            )
        if cluster and url is None and db != 0:
            raise ConfigurationError("a Redis Cluster has only db 0")
        self.url = url
        self.host = host
        self.port = port
        self.db = db
        self.prefix = prefix
        self.cluster = bool(cluster)
        self.command_timeout = float(command_timeout)
        self.connect_timeout = float(connect_timeout)
        self.max_connections = max_connections
        # Calls in flight, at most one per connection; the rest wait here (set by connect()).
        self._slots: asyncio.Semaphore | None = None
        self._batch: _Batch | None = None
        self._batch_tasks: set[asyncio.Task[None]] = set()
        self._username = username
        self._password = password
        self._ssl = ssl
        self._client: Any = None
        self._pool: Any = None
        self._direct: Any = None
        self._direct_busy = False
        self._scripts: dict[str, Any] = {}
        self._by_sha: dict[bytes, Any] = {}
        self._keys: dict[str, _QueueKeys] = {}
        self._registered: set[str] = set()
        self._hints: OrderedDict[str, str] = OrderedDict()
        self._done_prefix = f"{prefix}:done:"
        self._work_prefix = f"{prefix}:work:"
        self._hello = f"{prefix}:hello"
        # One slot for all cron schedules (and the records of their compare-and-sets).
        self._crons = f"{prefix}:{{{prefix}:crons}}"
        self._closing = False
        # pub/sub state
        self._changed = asyncio.Event()
        self._claim_generation: asyncio.Event | None = None
        self._due_hint: tuple[tuple[str, ...], float] | None = None
        self._listener_task: asyncio.Task[None] | None = None
        self._pubsub: Any = None
        self._listening = asyncio.Event()
        self._wanted: dict[str, int] = {}
        self._confirmed: dict[str, asyncio.Event] = {}
        self._done_waiters: dict[str, list[asyncio.Event]] = {}
        self._pubsub_node = 0

    @classmethod
    def from_url(cls, url: str) -> RedisBackend:
        """A backend from ``redis://[[user]:password@]host:6379/0?prefix=app1`` (or
        ``rediss://`` for TLS). Backend options travel as query parameters: ``prefix``,
        ``cluster`` (``true`` for a Redis Cluster), ``command_timeout``, ``connect_timeout``,
        ``max_connections``; any other parameter goes to redis-py (``ssl_cert_reqs``,
        ``socket_keepalive``, ...).
        ``RedisBackend(url=...)`` reads the same parameters."""
        return cls(url=url)

    def describe(self) -> str:
        """The server, database and prefix, without a password."""
        where = (
            redact_url(self.url)
            if self.url is not None
            else f"{'rediss' if self._ssl else 'redis'}://{self.host}:{self.port}/{self.db}"
        )
        return f"{where} (prefix {self.prefix}{', cluster' if self.cluster else ''})"

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True between ``connect()`` and ``close()``."""
        return self._client is not None

    def _client_options(self) -> dict[str, Any]:
        retry_mod = importlib.import_module("redis.asyncio.retry")
        backoff = importlib.import_module("redis.backoff")
        # sitq retries what is safe to retry itself (a claim is not): redis-py must not.
        return {
            "decode_responses": False,
            "retry": retry_mod.Retry(backoff.NoBackoff(), 0),
            "socket_timeout": None,
            "socket_connect_timeout": self.connect_timeout,
            # RESP2 replies parse faster in redis-py's pure-Python parser.
            "protocol": 2,
            "health_check_interval": 0,
            # Calls wait for one of max_connections (see _call) instead of failing; beyond
            # them, the pub/sub connection (and its successor while it is replaced).
            "max_connections": self.max_connections + 2,
        }

    def _make_client(self) -> Any:
        options = self._client_options()
        if self.cluster:
            cluster_cls = importlib.import_module("redis.asyncio.cluster").RedisCluster
            if self.url is not None:
                return cluster_cls.from_url(self.url, **options)
            return cluster_cls(
                host=self.host,
                port=self.port,
                username=self._username,
                password=self._password,
                ssl=self._ssl,
                **options,
            )
        if self.url is not None:
            return self._aioredis.Redis.from_url(self.url, **options)
        return self._aioredis.Redis(
            host=self.host,
            port=self.port,
            db=self.db,
            username=self._username,
            password=self._password,
            ssl=self._ssl,
            **options,
        )

    async def connect(self) -> None:
        """Connect, and load the Lua scripts into the server's script cache. Idempotent."""
        if self._client is not None:
            return
        self._closing = False
        self._changed = asyncio.Event()
        self._listening = asyncio.Event()
        try:
            client = self._make_client()
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"invalid Redis settings for {self.describe()}: {exc}"
            ) from exc
        try:
            async with asyncio.timeout(self.connect_timeout + self.command_timeout):
                if self.cluster:
                    await client.initialize()
                else:
                    await client.ping()
                for src in _SCRIPTS.values():
                    await client.script_load(src)
        except TypeError as exc:  # an unknown URL parameter reaches the connection class
            with contextlib.suppress(Exception):
                await client.aclose()
            raise ConfigurationError(
                f"invalid Redis settings for {self.describe()}: {exc}"
            ) from exc
        except self._errors() as exc:
            with contextlib.suppress(Exception):
                await client.aclose()
            raise BackendError(
                f"cannot connect to Redis at {self.describe()}: {type(exc).__name__}: {exc}"
            ) from exc
        self._scripts = {name: client.register_script(src) for name, src in _SCRIPTS.items()}
        self._by_sha = {s.sha.encode(): s for s in self._scripts.values()}
        self._client = client
        self._slots = asyncio.Semaphore(self.max_connections)
        if not self.cluster:
            self._pool = client.connection_pool
            try:
                self._direct = await self._pool.get_connection()
            except self._errors():
                self._direct = None

    async def close(self) -> None:
        """Close the connections and the pub/sub listener; wake every waiter. Idempotent."""
        client, self._client = self._client, None
        self._closing = True
        task, self._listener_task = self._listener_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._signal_all()
        batches = list(self._batch_tasks)
        for batch_task in batches:
            batch_task.cancel()
        if batches:
            await asyncio.gather(*batches, return_exceptions=True)
        if client is None:
            return
        direct, self._direct = self._direct, None
        pool, self._pool = self._pool, None
        if direct is not None and pool is not None:
            with contextlib.suppress(Exception):
                await pool.release(direct)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.aclose(), 10)
        self._wanted.clear()
        self._confirmed.clear()

    # -- plumbing ---------------------------------------------------------------------------

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (self._exc.RedisError, self._exc.RedisClusterException, OSError, TimeoutError)

    def _transient(self) -> tuple[type[BaseException], ...]:
        return (self._exc.ConnectionError, self._exc.TimeoutError, OSError, TimeoutError)

    def _check(self) -> None:
        if self._client is None:
            raise BackendError("RedisBackend is not connected: call `await backend.connect()`")

    def _queue_keys(self, queue: str) -> _QueueKeys:
        keys = self._keys.get(queue)
        if keys is None:
            base = f"{self.prefix}:{{{self.prefix}:{queue}}}"
            keys = _QueueKeys(
                task=f"{base}:t:",
                ready=f"{base}:ready",
                sched=f"{base}:sched",
                leases=f"{base}:leases",
                seq=f"{base}:seq",
                done_s=f"{base}:done:s",
                done_f=f"{base}:done:f",
                done_c=f"{base}:done:c",
                claims=f"{base}:claim:",
                settles=f"{base}:settle:",
                ck=f"{base}:ck",
                fence=f"{base}:f:",
                work=f"{self._work_prefix}{queue}",
                index=f"{self.prefix}:id:",
                prefix=self.prefix,
            )
            self._keys[queue] = keys
        return keys

    def _index_key(self, task_id: str) -> str:
        return f"{self.prefix}:id:{task_id}"

    def _evalsha(self, name: str, keys: Sequence[str], args: Iterable[Any]) -> tuple[Any, ...]:
        return ("EVALSHA", self._scripts[name].sha, len(keys), *keys, *args)

    def _remember(self, task_id: str, queue: str) -> None:
        hints = self._hints
        hints[task_id] = queue
        if len(hints) > _HINTS:
            hints.popitem(last=False)

    async def _exec(self, commands: Sequence[_Command], *, retry: bool = True) -> list[Any]:
        """Run commands in one round trip; return their replies (error replies as exception
        objects). Connection failures are retried (if ``retry``) and then raise BackendError."""
        if self._client is None or self._slots is None:
            raise BackendError("RedisBackend is not connected: call `await backend.connect()`")
        if not commands:
            return []
        attempts = 3 if retry else 1
        for attempt in range(attempts):
            try:
                return await self._call(commands)
            except self._transient() as exc:
                if attempt + 1 >= attempts or self._client is None:
                    raise BackendError(
                        f"Redis at {self.describe()}: {type(exc).__name__}: {exc}"
                    ) from exc
                await asyncio.sleep(0.02 * 2**attempt)
            except self._errors() as exc:
                raise BackendError(f"Redis: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _call(self, commands: Sequence[_Command]) -> list[Any]:
        """One attempt of ``_exec``. At most ``max_connections`` round trips are in flight,
        one per connection; a call that finds them all busy joins the open batch, whose
        commands go out together, pipelined on the next connection that frees up (waiting
        for it does not count against ``command_timeout``)."""
        slots = self._slots
        if slots is None:
            raise BackendError("RedisBackend is not connected: call `await backend.connect()`")
        if not slots.locked():
            async with slots, asyncio.timeout(self.command_timeout):
                return await self._run(commands)
        batch = self._batch
        if batch is None or len(batch.commands) >= _BATCH_COMMANDS:
            batch = self._batch = _Batch()
            task = asyncio.create_task(self._run_batch(batch), name="sitq-redis-batch")
            self._batch_tasks.add(task)
            task.add_done_callback(self._batch_tasks.discard)
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        start = len(batch.commands)
        batch.commands += commands
        batch.waiters.append((start, len(batch.commands), future))
        return await future

    async def _run_batch(self, batch: _Batch) -> None:
        """Wait for a connection, close the batch to newcomers, run its commands in one round
        trip and hand each caller its replies (or the error)."""
        outcome: list[Any] | BaseException
        try:
            slots = self._slots
            if slots is None:
                raise BackendError("RedisBackend was closed while the call waited")
            async with slots:
                if self._batch is batch:
                    self._batch = None
                if self._client is None:
                    raise BackendError("RedisBackend was closed while the call waited")
                async with asyncio.timeout(self.command_timeout):
                    outcome = await self._run(batch.commands)
        except asyncio.CancelledError:
            outcome = BackendError("RedisBackend was closed while the call waited")
        except Exception as exc:
            outcome = exc
        finally:
            if self._batch is batch:
                self._batch = None
        for start, end, future in batch.waiters:
            if future.done():  # the caller was cancelled
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome[start:end])

    async def _run(self, commands: Sequence[_Command]) -> list[Any]:
        if self.cluster:
            return await self._run_cluster(commands)
        return await self._run_direct(commands)

    async def _run_direct(self, commands: Sequence[_Command]) -> list[Any]:
        pool = self._pool
        if pool is None:
            raise BackendError("RedisBackend is not connected: call `await backend.connect()`")
        direct = self._direct
        use_direct = direct is not None and not self._direct_busy
        if use_direct:
            conn = direct
            self._direct_busy = True
        else:
            conn = await pool.get_connection()
        try:
            if use_direct:
                await pool.ensure_connection(conn)
            replies = await self._roundtrip(conn, commands)
            missing = [i for i, r in enumerate(replies) if isinstance(r, self._exc.NoScriptError)]
            if missing:
                # The server lost its script cache (SCRIPT FLUSH, restart, failover): load the
                # scripts and run again what did not run.
                scripts = {_sha_of(commands[i]) for i in missing}
                await self._roundtrip(
                    conn,
                    [("SCRIPT", "LOAD", self._script_for(sha).script) for sha in scripts],
                )
                again = await self._roundtrip(conn, [commands[i] for i in missing])
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
            return replies
        except BaseException:
            # A command may be half sent or its reply unread: the connection is unusable.
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            raise
        finally:
            if use_direct:
                self._direct_busy = False
            else:
                with contextlib.suppress(Exception):
                    await pool.release(conn)

    def _script_for(self, sha: Any) -> Any:
        key = sha if isinstance(sha, bytes) else str(sha).encode()
        return self._by_sha[key]

    async def _roundtrip(self, conn: Any, commands: Sequence[_Command]) -> list[Any]:
        # Sent in pieces of about 16 KiB: the server works on the first while later ones are
        # encoded.
        start = 0
        size = 0
        for i, command in enumerate(commands):
            size += 16_384 if isinstance(command, _Raw) else 64
            if size >= 16_384 and i + 1 < len(commands):
                await conn.send_packed_command(_pack(commands[start : i + 1]), check_health=False)
                start, size = i + 1, 0
        await conn.send_packed_command(_pack(commands[start:]), check_health=False)
        replies: list[Any] = []
        response_error = self._exc.ResponseError
        for _ in commands:
            try:
                replies.append(await conn.read_response())
            except response_error as exc:
                replies.append(exc)
        return replies

    async def _run_cluster(self, commands: Sequence[_Command]) -> list[Any]:
        client = self._client
        replies = await self._cluster_once(client, commands)
        missing = [i for i, r in enumerate(replies) if isinstance(r, self._exc.NoScriptError)]
        if missing:
            for sha in {_sha_of(commands[i]) for i in missing}:
                await client.script_load(self._script_for(sha).script)
            again = await self._cluster_once(client, [commands[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _cluster_once(self, client: Any, commands: Sequence[_Command]) -> list[Any]:
        plain: list[tuple[Any, ...]] = []
        for command in commands:
            if isinstance(command, _Raw):  # pragma: no cover - a programming error
                raise TypeError("pre-encoded commands are for standalone servers only")
            plain.append(command)
        if len(plain) == 1:
            try:
                return [await client.execute_command(*plain[0])]
            except self._exc.ResponseError as exc:
                return [exc]
        pipe = client.pipeline(transaction=False)
        for command in plain:
            pipe.execute_command(*command)
        return list(await pipe.execute(raise_on_error=False))

    def _raise_errors(self, replies: Sequence[Any]) -> None:
        for reply in replies:
            if isinstance(reply, Exception):
                raise BackendError(f"Redis: {type(reply).__name__}: {reply}") from reply

    async def _locate(self, task_ids: Iterable[str]) -> dict[str, str]:
        """The queue of each task id that has one (remembered, else from the id index)."""
        found: dict[str, str] = {}
        unknown: list[str] = []
        for task_id in task_ids:
            queue = self._hints.get(task_id)
            if queue is not None:
                found[task_id] = queue
            elif task_id not in found:
                unknown.append(task_id)
        if unknown:
            unknown = list(dict.fromkeys(unknown))
            replies = await self._exec([("GET", self._index_key(i)) for i in unknown])
            self._raise_errors(replies)
            for task_id, reply in zip(unknown, replies, strict=True):
                if reply is not None:
                    found[task_id] = _entry_queue(reply)
        return found

    # -- pub/sub ----------------------------------------------------------------------------

    def _signal_all(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()
        for events in self._done_waiters.values():
            for e in events:
                e.set()

    def _on_work(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def _poll_cap(self) -> float:
        return 1.0 if self._listening.is_set() else 0.1

    def _ensure_listener(self) -> None:
        if self._listener_task is None and not self._closing and self._client is not None:
            self._listener_task = asyncio.create_task(self._listen(), name="sitq-redis-pubsub")

    def _new_pubsub(self) -> Any:
        client = self._client
        if client is None:
            raise BackendError("RedisBackend is not connected")
        if not self.cluster:
            return client.pubsub()
        # Classic pub/sub messages reach every node of a cluster: listen on any one of them,
        # moving on to the next when it fails.
        nodes = client.get_nodes()
        node = nodes[self._pubsub_node % len(nodes)]
        self._pubsub_node += 1
        return client.pubsub(node=node)

    async def _listen(self) -> None:
        delay = 0.05
        while not self._closing:
            pubsub = None
            try:
                pubsub = self._new_pubsub()
                self._confirmed = {}
                channels = [self._hello, *self._wanted]
                for channel in channels:
                    self._confirmed[channel] = asyncio.Event()
                await pubsub.subscribe(*channels)
                self._pubsub = pubsub
                awaiting_pong = False
                while not self._closing:
                    message = await pubsub.get_message(timeout=30.0)
                    if message is None:
                        if awaiting_pong:
                            raise self._exc.ConnectionError("no reply to PING within 30 s")
                        # A quiet connection may be dead without the client knowing.
                        await pubsub.ping()
                        awaiting_pong = True
                        continue
                    awaiting_pong = False
                    if self._on_message(message):
                        delay = 0.05
            except asyncio.CancelledError:
                self._pubsub = None
                self._listening.clear()
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(pubsub.aclose(), 2)
                raise
            except Exception as exc:
                if not self._closing:
                    log.warning("Redis pub/sub connection failed: %s; reconnecting", exc)
            self._pubsub = None
            self._listening.clear()
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 2)
            # Whatever was published while we were not listening must be looked at again.
            self._signal_all()
            if self._closing:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _on_message(self, message: dict[str, Any]) -> bool:
        kind = message.get("type")
        raw = message.get("channel")
        channel = raw.decode() if isinstance(raw, bytes) else str(raw)
        if kind in ("message", b"message"):
            if channel.startswith(self._done_prefix):
                for e in self._done_waiters.get(channel[len(self._done_prefix) :], ()):
                    e.set()
            elif channel.startswith(self._work_prefix):
                self._on_work()
            return False
        if kind in ("subscribe", b"subscribe"):
            # Only a subscription still wanted counts (a late reply to an undone one does not).
            event = self._confirmed.get(channel)
            if event is not None:
                event.set()
            if channel == self._hello and not self._listening.is_set():
                self._listening.set()
                # Anything that happened before this point must be looked at again.
                self._signal_all()
                return True
        return False

    async def _subscribe(self, channels: Sequence[str], *, counted: bool) -> bool:
        """Subscribe to channels (``counted``: once per caller, undone by ``_unsubscribe``)
        and wait, bounded, until the server confirms. True if a subscription was new."""
        self._ensure_listener()
        new = []
        for channel in channels:
            count = self._wanted.get(channel, 0)
            if count == 0:
                new.append(channel)
            if counted or count == 0:
                self._wanted[channel] = count + 1
        if not new and all(self._is_confirmed(c) for c in channels):
            return False
        if not self._listening.is_set():
            # The listener subscribes to everything wanted once it is connected.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._listening.wait(), 1.0)
            if not self._listening.is_set():
                return bool(new)
        send = [c for c in new if c not in self._confirmed]
        events = [self._confirmed.setdefault(c, asyncio.Event()) for c in channels]
        pubsub = self._pubsub
        if pubsub is not None and send:
            try:
                await pubsub.subscribe(*send)
            except Exception as exc:  # the listener sees the broken connection too
                log.debug("subscribing to %s failed: %s", send, exc)
                return bool(new)
        waiting = [e.wait() for e in events if not e.is_set()]
        if waiting:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waiting), 1.0)
        return bool(new)

    def _is_confirmed(self, channel: str) -> bool:
        event = self._confirmed.get(channel)
        return event is not None and event.is_set()

    async def _unsubscribe(self, channel: str) -> None:
        count = self._wanted.get(channel, 0) - 1
        if count > 0:
            self._wanted[channel] = count
            return
        self._wanted.pop(channel, None)
        self._confirmed.pop(channel, None)
        pubsub = self._pubsub
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.unsubscribe(channel)

    # -- tasks ------------------------------------------------------------------------------

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[bool]:
        """Store tasks with one script call per queue (in one round trip); an id still known
        is left alone. On a standalone server the script also checks and sets each id's
        index entry; on a Redis Cluster an explicit id claims its entry first (see
        ``_enqueue_claimed``)."""
        self._check()
        if not tasks:
            return []
        if len(tasks) == 1 and tasks[0].queue in self._registered and not self.cluster:
            return [await self._enqueue_one(tasks[0])]
        stored = [False] * len(tasks)
        queues = {t.queue for t in tasks}
        commands: list[_Command] = [
            ("SADD", f"{self.prefix}:queues", queue) for queue in queues - self._registered
        ]
        if self.cluster:
            # Each id's index key has a slot of its own: one SET per generated id (redis-py
            # sends each to its node), before the queue's script.
            now = [i for i, t in enumerate(tasks) if t.fresh_id]
            commands += [("SET", self._index_key(tasks[i].id), tasks[i].queue) for i in now]
            explicit = [i for i, t in enumerate(tasks) if not t.fresh_id]
        else:
            now = list(range(len(tasks)))
            explicit = []
        first_call = len(commands)
        calls = self._enqueue_calls(tasks, now, commands)
        replies = await self._exec(commands)
        self._raise_errors(replies)
        self._registered.update(queues)
        for chunk, reply in zip(calls, replies[first_call:], strict=True):
            for i, flag in zip(chunk, bytes(reply), strict=True):
                if flag == 49:  # b"1"
                    stored[i] = True
                    self._remember(tasks[i].id, tasks[i].queue)
        if explicit:
            await self._enqueue_claimed(tasks, explicit, stored)
        return stored

    def _enqueue_calls(
        self,
        tasks: Sequence[NewTask],
        indices: Sequence[int],
        commands: list[_Command],
        kinds: dict[int, str] | None = None,
    ) -> list[list[int]]:
        """Append the enqueue script calls for ``tasks[i] for i in indices`` (one per queue and
        chunk) to ``commands``; return the task indices of each call. ``kinds`` gives the
        claim of each explicit id on a cluster."""
        groups: dict[str, list[int]] = {}
        for i in indices:
            groups.setdefault(tasks[i].queue, []).append(i)
        calls: list[list[int]] = []
        for queue, members in groups.items():
            k = self._queue_keys(queue)
            for start in range(0, len(members), _ENQUEUE_CHUNK):
                chunk = members[start : start + _ENQUEUE_CHUNK]
                calls.append(chunk)
                if not self.cluster:
                    commands.append(self._packed_enqueue(k, [tasks[i] for i in chunk]))
                    continue
                args: list[Any] = [k.task, k.work, queue, self.prefix]
                for i in chunk:
                    t = tasks[i]
                    args += [
                        t.id,
                        b"1" if kinds is None else kinds[i],
                        t.priority,
                        b"" if t.eta <= t.enqueued_at else repr(float(t.eta)),
                        t.payload,
                        t.options,
                        repr(float(t.result_ttl)),
                        t.concurrency_key or b"",
                        b"" if t.concurrency_limit is None else t.concurrency_limit,
                    ]
                keys = [k.ready, k.sched, k.seq, k.done_s, k.done_f, k.done_c]
                commands.append(self._evalsha("enqueue", keys, args))
        return calls

    async def _enqueue_claimed(
        self, tasks: Sequence[NewTask], pending: list[int], stored: list[bool]
    ) -> None:
        """Enqueue explicit ids on a Redis Cluster, where an id's index entry and its queue are
        in different slots (see _CLAIM_INDEX): claim each id's entry, then in one round trip
        store the ids whose entry names their queue and revoke, on the queue the entry names,
        the claim of the others (the id is known if it is still there). A revoked entry is
        taken over by compare-and-set in the next round. Sets ``stored[i]``."""
        replace: dict[int, str] = {}
        waited: set[int] = set()
        for attempt in range(_CLAIM_TRIES):
            entries = await self._exec(
                [
                    self._evalsha(
                        "claim_index",
                        [self._index_key(tasks[i].id)],
                        [tasks[i].queue, uuid.uuid4().hex[:16], replace.pop(i, "")],
                    )
                    for i in pending
                ]
            )
            self._raise_errors(entries)
            commands: list[_Command] = []
            kinds: dict[int, str] = {}
            claims: dict[int, str] = {}
            revoked: list[tuple[int, str, str]] = []
            again: list[int] = []
            for i, (raw, raw_now) in zip(pending, entries, strict=True):
                entry = bytes(raw).decode()
                queue, token, claimed = _parse_entry(entry)
                if queue == tasks[i].queue:
                    kinds[i] = f"{claimed} {token}"
                    claims[i] = entry
                elif int(raw_now) - claimed < _FRESH_MS and i not in waited:
                    waited.add(i)
                    again.append(i)
                else:
                    k = self._queue_keys(queue)
                    commands.append(
                        self._evalsha(
                            "revoke",
                            [k.task + tasks[i].id, k.fence + tasks[i].id],
                            [token, claimed],
                        )
                    )
                    revoked.append((i, queue, entry))
            calls = self._enqueue_calls(tasks, list(kinds), commands, kinds)
            replies = await self._exec(commands)
            self._raise_errors(replies)
            contested = bool(again)
            for (i, queue, entry), alive in zip(revoked, replies[: len(revoked)], strict=True):
                if alive:
                    self._remember(tasks[i].id, queue)  # known there: left alone
                else:
                    replace[i] = entry
                    again.append(i)
            for chunk, reply in zip(calls, replies[len(revoked) :], strict=True):
                for i, flag in zip(chunk, bytes(reply).decode(), strict=True):
                    if flag == "1":
                        stored[i] = True
                        self._remember(tasks[i].id, tasks[i].queue)
                    elif flag == "0":
                        self._remember(tasks[i].id, tasks[i].queue)
                    else:
                        if flag == "F":
                            # Another queue is taking the id over, or the taker died before
                            # its compare-and-set: a fenced entry may be replaced.
                            replace[i] = claims[i]
                            contested = True
                        again.append(i)
            pending = again
            if not pending:
                return
            if contested:
                await asyncio.sleep(random.uniform(0.001, 0.002 * 2 ** min(attempt, 5)))
        raise BackendError(
            f"Redis at {self.describe()}: task ids {[tasks[i].id for i in pending][:5]} were "
            f"still contested after {_CLAIM_TRIES} rounds (enqueued on other queues at the "
            "same time again and again, or the cluster nodes' clocks disagree by more than "
            f"{_CLAIM_WINDOW_MS // 1000} s)"
        )

    def _packed_enqueue(self, k: _QueueKeys, chunk: Sequence[NewTask]) -> _Raw:
        """The enqueue script call for a chunk of tasks of one standalone server's queue,
        encoded when it is sent."""
        sha = self._scripts["enqueue"].sha
        return _Raw(functools.partial(_encode_enqueue, sha, k, chunk), sha)

    async def _enqueue_one(self, t: NewTask) -> bool:
        # The common case on a standalone server, kept short: one task on a known queue, one
        # script call (which also checks and sets the id's index key).
        replies = await self._exec([self._packed_enqueue(self._queue_keys(t.queue), (t,))])
        if isinstance(replies[0], Exception):
            self._raise_errors(replies)
        stored = bytes(replies[0]) == b"1"
        if stored:
            self._remember(t.id, t.queue)
        return stored

    async def claim(
        self, queues: Sequence[str], limit: int, worker_id: str, lease: float
    ) -> list[Claim]:
        """Take due tasks (expired leases first, then by priority, ETA and enqueue order) with
        one script per queue; several queues are looked at first, to take the best of all.
        A keyed task whose key is full is parked by the script, which goes on with the tasks
        behind it."""
        self._check()
        self._claim_generation = self._changed
        if limit <= 0:
            return []
        if len(queues) == 1:
            claims, etas, _ = await self._claim_round({queues[0]: limit}, worker_id, lease, True)
            return claims
        claims = []
        etas = {}
        for _ in range(_CLAIM_ROUNDS):
            counts = await self._plan_claims(queues, limit - len(claims))
            if not counts:
                break
            got, got_etas, parked = await self._claim_round(counts, worker_id, lease, False)
            claims += got
            etas.update(got_etas)
            # Parked tasks have left `ready`: plan again to give their share to other tasks.
            if not parked or len(claims) >= limit:
                break
        # Each queue's claims are in order; put them in one order across the queues.
        claims.sort(key=lambda c: (-c.priority, etas[c.task_id]))
        return claims

    async def _claim_round(
        self, counts: dict[str, int], worker_id: str, lease: float, hint: bool
    ) -> tuple[list[Claim], dict[str, float], bool]:
        """One claim script per queue (``counts`` tasks each) in one round trip: the claims,
        their ETAs, and whether any script parked a task."""
        commands = []
        request = uuid.uuid4().hex
        for queue, n in counts.items():
            k = self._queue_keys(queue)
            commands.append(
                self._evalsha(
                    "claim",
                    [k.ready, k.sched, k.leases, k.seq, f"{k.claims}{request}", k.ck],
                    [k.task, n, repr(lease), worker_id, k.work, _MAX_PARK],
                )
            )
        # Safe to retry: a retry of a request that ran replays its claims (see _CLAIM).
        replies = await self._exec(commands)
        self._raise_errors(replies)
        claims: list[Claim] = []
        etas: dict[str, float] = {}
        due_at = math.inf
        parked = False
        for queue, reply in zip(counts, replies, strict=True):
            now = int(reply[0]) + int(reply[1]) / 1_000_000
            if reply[2]:
                due_at = min(due_at, float(reply[2]) - now)
            if reply[3]:
                parked = True
            for j in range(4, len(reply), 4):
                task_id = reply[j].decode()
                try:
                    fence, att, pri, ret, enq, ttl, cancel, eta = reply[j + 3].split()
                    claim = Claim(
                        task_id=task_id,
                        queue=queue,
                        payload=reply[j + 1],
                        options=reply[j + 2].decode(),
                        priority=int(pri),
                        fencing_token=int(fence),
                        attempts=int(att),
                        retries=int(ret),
                        enqueued_at=float(enq),
                        started_at=now,
                        result_ttl=float(ttl),
                        cancel_requested=cancel == b"1",
                    )
                    etas[task_id] = float(eta)
                except (ValueError, AttributeError, UnicodeDecodeError):
                    claim = _unreadable_claim(task_id, queue, reply[j + 1 : j + 4], now)
                    etas[task_id] = 0.0
                self._remember(task_id, queue)
                claims.append(claim)
        if hint:
            self._due_hint = (tuple(counts), time.monotonic() + due_at)
        return claims, etas, parked

    async def _plan_claims(self, queues: Sequence[str], limit: int) -> dict[str, int]:
        commands = []
        for queue in queues:
            k = self._queue_keys(queue)
            commands.append(
                self._evalsha("peek", [k.ready, k.sched, k.leases, k.seq], [k.task, limit])
            )
        replies = await self._exec(commands)
        self._raise_errors(replies)
        counts: dict[str, int] = {}
        left = limit
        for queue, reply in zip(queues, replies, strict=True):
            take = min(int(reply[0]), left)
            if take:
                counts[queue] = take
                left -= take
        heads = sorted(
            (bytes(m)[:_RANK_LEN], queue)
            for queue, reply in zip(queues, replies, strict=True)
            for m in reply[1:]
        )
        for _, queue in heads[:left]:
            counts[queue] = counts.get(queue, 0) + 1
        return counts

    async def extend_lease(self, claims: Sequence[ClaimRef], lease: float) -> list[LeaseState]:
        """Extend current claims, one script per queue, in one round trip."""
        self._check()
        if not claims:
            return []
        where = await self._locate(c.task_id for c in claims)
        groups: dict[str, list[int]] = {}
        for i, ref in enumerate(claims):
            queue = where.get(ref.task_id)
            if queue is not None:
                groups.setdefault(queue, []).append(i)
        commands = []
        for queue, indices in groups.items():
            k = self._queue_keys(queue)
            args: list[Any] = [k.task, repr(lease)]
            for i in indices:
                args += [claims[i].task_id, claims[i].fencing_token]
            commands.append(self._evalsha("extend", [k.leases, k.ck], args))
        replies = await self._exec(commands)
        self._raise_errors(replies)
        states = [LeaseState.LOST] * len(claims)
        for indices, reply in zip(groups.values(), replies, strict=True):
            for i, code in zip(indices, bytes(reply), strict=True):
                states[i] = _LEASE_STATES[code - 48]
        return states

    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        """Apply fenced settlements, one script per queue, in one round trip."""
        self._check()
        if not settlements:
            return []
        where = await self._locate(s.claim.task_id for s in settlements)
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(settlements):
            queue = where.get(s.claim.task_id)
            if queue is not None:
                groups.setdefault(queue, []).append(i)
        commands = []
        request = uuid.uuid4().hex
        for queue, indices in groups.items():
            k = self._queue_keys(queue)
            args: list[Any] = [k.task, k.work, self._done_prefix]
            for i in indices:
                s = settlements[i]
                ref = s.claim
                if isinstance(s, Finish):
                    args += [
                        b"F",
                        ref.task_id,
                        ref.fencing_token,
                        _STATUS_CODE[s.status],
                        _opt(s.value),
                        _opt(s.error),
                        _opt(s.traceback),
                        repr(max(s.expires_at - s.finished_at, 0.001)),
                    ]
                elif isinstance(s, Reschedule):
                    args += [
                        b"R",
                        ref.task_id,
                        ref.fencing_token,
                        repr(float(s.eta)),
                        _opt(s.error),
                        _opt(s.traceback),
                    ]
                elif isinstance(s, Release):
                    args += [b"L", ref.task_id, ref.fencing_token]
                else:  # pragma: no cover
                    raise TypeError(f"not a settlement: {s!r}")
            commands.append(
                self._evalsha(
                    "settle",
                    [
                        k.ready,
                        k.sched,
                        k.leases,
                        k.seq,
                        k.done_s,
                        k.done_f,
                        k.done_c,
                        f"{k.settles}{request}",
                        k.ck,
                    ],
                    args,
                )
            )
        replies = await self._exec(commands)
        self._raise_errors(replies)
        applied = [False] * len(settlements)
        for indices, reply in zip(groups.values(), replies, strict=True):
            for i, flag in zip(indices, bytes(reply), strict=True):
                applied[i] = flag == 49  # b"1"
        for s in settlements:
            if isinstance(s, Finish):
                # A worker has no more use for the queue of a task it finished: without this,
                # every worker would hold the ids of its last 100,000 tasks (tens of MB).
                self._hints.pop(s.claim.task_id, None)
        return applied

    async def cancel(self, task_id: str, now: float) -> CancelOutcome:
        """Cancel a pending task (it finishes as cancelled) or flag a running one."""
        self._check()
        hinted = self._hints.get(task_id)
        code = 0
        if hinted is not None:
            code = await self._cancel_in(hinted, task_id)
        if code == 0:
            # Not remembered, or remembered wrongly: ask the id index.
            self._hints.pop(task_id, None)
            queue = await self._locate_index(task_id)
            if queue is not None and queue != hinted:
                code = await self._cancel_in(queue, task_id)
        return (
            CancelOutcome.NOT_FOUND,
            CancelOutcome.CANCELLED,
            CancelOutcome.REQUESTED,
            CancelOutcome.ALREADY_FINISHED,
        )[code]

    async def _cancel_in(self, queue: str, task_id: str) -> int:
        k = self._queue_keys(queue)
        # Not retried: a cancel that ran twice would report "already finished".
        (reply,) = await self._exec(
            [
                self._evalsha(
                    "cancel",
                    [k.ready, k.sched, k.done_c, k.ck],
                    [k.task, task_id, self._done_prefix, k.work],
                )
            ],
            retry=False,
        )
        self._raise_errors([reply])
        return int(reply)

    async def get_task(self, task_id: str) -> TaskSnapshot | None:
        """Read the task's hash in its queue (remembered, else from the id index)."""
        self._check()
        hinted = self._hints.get(task_id)
        if hinted is not None:
            snap = await self._read(hinted, task_id)
            if snap is not None:
                return snap
            self._hints.pop(task_id, None)
        queue = await self._locate_index(task_id)
        if queue is None or queue == hinted:
            return None
        return await self._read(queue, task_id)

    async def _locate_index(self, task_id: str) -> str | None:
        (reply,) = await self._exec([("GET", self._index_key(task_id))])
        self._raise_errors([reply])
        return None if reply is None else _entry_queue(reply)

    async def _read(self, queue: str, task_id: str) -> TaskSnapshot | None:
        key = self._queue_keys(queue).task + task_id
        (row,) = await self._exec(
            [("HMGET", key, "st", "att", "enq", "eta", "sa", "fa", "v", "err", "tb")]
        )
        self._raise_errors([row])
        if row[0] is None:
            return None
        return TaskSnapshot(
            task_id=task_id,
            queue=queue,
            status=_CODE_STATUS[bytes(row[0])],
            attempts=int(row[1] or 0),
            enqueued_at=_stamp(row[2]),
            eta=_stamp(row[3]),
            started_at=_float(row[4]),
            finished_at=_float(row[5]),
            value=None if row[6] is None else bytes(row[6]),
            error=_text(row[7]),
            traceback=_text(row[8]),
        )

    async def wait_for_result(self, task_id: str, timeout: float) -> TaskSnapshot | None:
        """Wait for the task's done message (pub/sub), with a bounded fallback poll."""
        deadline = time.monotonic() + timeout
        snap = await self.get_task(task_id)
        if snap is None or snap.status.is_final or timeout <= 0:
            return snap
        channel = self._done_prefix + task_id
        event = asyncio.Event()
        self._done_waiters.setdefault(task_id, []).append(event)
        try:
            await self._subscribe([channel], counted=True)
            while True:
                event.clear()
                snap = await self.get_task(task_id)
                remaining = deadline - time.monotonic()
                if snap is None or snap.status.is_final or remaining <= 0 or self._closing:
                    return snap
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, self._poll_cap()))
        finally:
            waiters = self._done_waiters.get(task_id, [])
            if event in waiters:
                waiters.remove(event)
            if not waiters:
                self._done_waiters.pop(task_id, None)
            await self._unsubscribe(channel)

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Wait for a work message on the queues' channels, the next ETA or lease expiry (as
        the last claim reported it), or ``timeout``."""
        self._check()
        changed = self._claim_generation or self._changed
        self._claim_generation = None
        hint, self._due_hint = self._due_hint, None
        if await self._subscribe([self._queue_keys(q).work for q in queues], counted=False):
            return  # newly listening: something may have come in before; claim again
        if hint is not None and hint[0] == tuple(queues):
            due_in = hint[1] - time.monotonic()
        else:
            due_in = await self._next_due(queues)
        timeout = min(timeout, max(due_in, 0.0), self._poll_cap())
        if timeout <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout)

    async def _next_due(self, queues: Sequence[str]) -> float:
        commands = []
        for queue in queues:
            k = self._queue_keys(queue)
            commands.append(self._evalsha("next_due", [k.ready, k.sched, k.leases], []))
        replies = await self._exec(commands)
        self._raise_errors(replies)
        due = math.inf
        for reply in replies:
            if reply[2]:
                now = int(reply[0]) + int(reply[1]) / 1_000_000
                due = min(due, float(reply[2]) - now)
        return due

    async def _queues(self) -> list[str]:
        (members,) = await self._exec([("SMEMBERS", f"{self.prefix}:queues")])
        self._raise_errors([members])
        return sorted(bytes(m).decode() for m in members)

    async def purge_expired(self, now: float, limit: int = 10_000) -> int:
        """Trim up to ``limit`` expired results from the queues' done sets (their hashes have
        expired already) and drop their id index entries."""
        self._check()
        queues = await self._queues()
        removed: list[tuple[str, str]] = []
        left = limit
        for queue in queues:
            if left <= 0:
                break
            k = self._queue_keys(queue)
            (reply,) = await self._exec(
                [self._evalsha("purge", [k.done_s, k.done_f, k.done_c], [left])]
            )
            self._raise_errors([reply])
            removed += [(queue, bytes(i).decode()) for i in reply]
            left -= len(reply)
        if not removed:
            return len(removed)
        if self.cluster:
            await self._unindex_cluster(removed)
        else:
            # The entry goes only if it names the queue and the task is gone there, in one
            # step: an id enqueued again meanwhile keeps it.
            self._raise_errors(
                await self._exec(
                    [
                        self._evalsha(
                            "unindex",
                            [self._index_key(i), self._queue_keys(q).task + i],
                            [q],
                        )
                        for q, i in removed
                    ]
                )
            )
        for _, task_id in removed:
            self._hints.pop(task_id, None)
        return len(removed)

    async def _unindex_cluster(self, removed: Sequence[tuple[str, str]]) -> None:
        """Drop the index entries of purged ids on a Redis Cluster: an entry that names the
        purged queue goes once a revoke (see _CLAIM_INDEX) found the id gone there, and only
        if it is unchanged since it was read."""
        entries = await self._exec([("GET", self._index_key(i)) for _, i in removed])
        self._raise_errors(entries)
        owned = []
        for (queue, task_id), raw in zip(removed, entries, strict=True):
            if raw is not None and _entry_queue(raw) == queue:
                owned.append((queue, task_id, bytes(raw).decode()))
        if not owned:
            return
        commands: list[_Command] = []
        for queue, task_id, entry in owned:
            _, token, claimed = _parse_entry(entry)
            k = self._queue_keys(queue)
            commands.append(
                self._evalsha("revoke", [k.task + task_id, k.fence + task_id], [token, claimed])
            )
        alive = await self._exec(commands)
        self._raise_errors(alive)
        gone = [
            self._evalsha("unindex", [self._index_key(task_id)], [entry])
            for (_, task_id, entry), exists in zip(owned, alive, strict=True)
            if not exists
        ]
        if gone:
            self._raise_errors(await self._exec(gone))

    async def stats(self, now: float) -> list[QueueStats]:
        """Count tasks per queue and state (one script per queue, one round trip)."""
        self._check()
        queues = await self._queues()
        commands = []
        for queue in queues:
            k = self._queue_keys(queue)
            commands.append(
                self._evalsha(
                    "stats", [k.ready, k.sched, k.leases, k.done_s, k.done_f, k.done_c, k.ck], []
                )
            )
        replies = await self._exec(commands)
        self._raise_errors(replies)
        out = []
        for queue, reply in zip(queues, replies, strict=True):
            counts = [int(x) for x in reply]
            if any(counts):
                out.append(QueueStats(queue, *counts))
        return out

    # -- cron -------------------------------------------------------------------------------

    async def put_cron(self, name: str, definition: bytes, start: float) -> None:
        """Create the schedule at ``start``, or replace its definition keeping its last tick
        (one script on the crons hash)."""
        self._check()
        (reply,) = await self._exec(
            [self._evalsha("cron_put", [self._crons], [name, definition, repr(float(start))])]
        )
        self._raise_errors([reply])

    async def delete_cron(self, name: str) -> bool:
        """Remove both fields of the schedule; ``True`` if it existed."""
        self._check()
        (reply,) = await self._exec([("HDEL", self._crons, f"d:{name}", f"t:{name}")])
        self._raise_errors([reply])
        return int(reply) > 0

    async def list_crons(self) -> list[CronRecord]:
        """Every schedule, sorted by name, from one read of the crons hash."""
        self._check()
        (reply,) = await self._exec([("HGETALL", self._crons)])
        self._raise_errors([reply])
        # redis-py's cluster client turns the flat reply into a dict; the direct path does not.
        pairs = (
            list(reply.items())
            if isinstance(reply, dict)
            else list(zip(reply[::2], reply[1::2], strict=True))
        )
        definitions: dict[str, bytes] = {}
        ticks: dict[str, float] = {}
        for field, value in pairs:
            kind, name = bytes(field).decode().split(":", 1)
            if kind == "d":
                definitions[name] = bytes(value)
            else:
                ticks[name] = float(value)
        return [
            CronRecord(name, definitions[name], ticks[name])
            for name in sorted(definitions)
            if name in ticks
        ]

    async def advance_cron(self, name: str, expected: float, tick: float) -> bool:
        """Compare-and-set the schedule's last tick in one script; safe to retry."""
        self._check()
        (reply,) = await self._exec(
            [
                self._evalsha(
                    "cron_advance",
                    [self._crons, f"{self._crons}:advance:{uuid.uuid4().hex}"],
                    [name, repr(float(expected)), repr(float(tick))],
                )
            ]
        )
        self._raise_errors([reply])
        return int(reply) == 1

    # -- locks ------------------------------------------------------------------------------

    def _lock_key(self, name: str) -> str:
        return f"{self.prefix}:lock:{name}"

    async def _lock_step(self, script: str, name: str, *args: Any) -> bool:
        self._check()
        (reply,) = await self._exec([self._evalsha(script, [self._lock_key(name)], args)])
        self._raise_errors([reply])
        return int(reply) == 1

    async def acquire_lock(self, name: str, token: str, ttl: float) -> bool:
        """Take the lock if its key is absent (Redis drops it when the TTL runs out, on the
        server's clock): ``SET ... PX`` in a script, one round trip."""
        return await self._lock_step("lock_acquire", name, token, _millis(ttl))

    async def extend_lock(self, name: str, token: str, ttl: float) -> bool:
        """Reset the lock's TTL if ``token`` still holds it."""
        return await self._lock_step("lock_extend", name, token, _millis(ttl))

    async def release_lock(self, name: str, token: str) -> bool:
        """Delete the lock if ``token`` still holds it."""
        return await self._lock_step("lock_release", name, token)


# sitq's own options of RedisBackend that a URL's query may carry, with the constructor's
# defaults: a value that differs from its default was given as an argument.
_URL_DEFAULTS: dict[str, Any] = {
    name: param.default
    for name, param in inspect.signature(RedisBackend.__init__).parameters.items()
    if name in ("prefix", "cluster", "command_timeout", "connect_timeout", "max_connections")
}
