"""The Lua scripts of ``RedisStore``; each touches one tenant's hash slot and runs atomically.

They mirror ``limits.LimitMeter`` (and ``limits.admit`` for the two levels) line for line. The
clock is Redis ``TIME``, so every replica measures windows on one clock. Numbers come back as
strings: Redis truncates Lua floats.
"""

from __future__ import annotations

# KEYS: the tenant's accepted log, token buckets, leases, holds, reserved cost, spend by month;
#       for a key with limits of its own, then the same six of the key's (same hash slot)
# ARGV: rid, window_s, tokens, cost_nano, rpm, tpm, concurrency, budget_nano (-1 = none),
#       month, lease_s (how long the lease lives unless its replica renews it), buckets;
#       for a key with limits of its own, then its rpm, tpm, concurrency, budget_nano
# Returns {"ok", now, used[, key_used]} | {refusal, level, retry_after, now}, where ``used`` is
# the month's spend plus outstanding reservations before this one (nano-dollars), a refusal is
# "quota", "too_large", "concurrency", "requests" or "tokens", and level "tenant" or "key".
# Both levels are checked before either reserves; when both refuse, the one that binds longest
# is answered (quota, then too_large, then the latest retry_after; the key's on a tie).
# A request id that holds a reservation already is answered "ok" again, reserving nothing: a
# client may run the script twice when its first reply was lost (a cluster client retries).
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rid, window = ARGV[1], tonumber(ARGV[2])
local tokens, cost = tonumber(ARGV[3]), tonumber(ARGV[4])
local month, lease, nbuckets = ARGV[9], tonumber(ARGV[10]), tonumber(ARGV[11])
local bucket_s = window / nbuckets
local current = math.floor(now / bucket_s)
local keyed = #KEYS > 6
local fmt = function(x) return string.format('%.6f', x) end
local int = function(x) return string.format('%d', x) end

-- k: 0 for the tenant's six keys, 6 for the key's
local function spent(k)
  return tonumber(redis.call('HGET', KEYS[k + 6], month) or '0')
    + tonumber(redis.call('GET', KEYS[k + 5]) or '0')
end

if redis.call('HEXISTS', KEYS[4], rid) == 1 then
  local at = redis.call('ZSCORE', KEYS[1], rid)
  local reply = {'ok', fmt(at and tonumber(at) or now), int(spent(0) - cost)}
  if keyed then reply[4] = int(spent(6) - cost) end
  return reply
end

-- Leases nobody renewed (their replica died) give back the tokens and cost they reserved.
local function sweep(k)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[k + 3], '-inf', now)) do
    local hold = redis.call('HGET', KEYS[k + 4], id)
    if hold then
      local held_tokens, held_bucket, held_cost = string.match(hold, '(%S+) (%S+) (%S+)')
      redis.call('DECRBY', KEYS[k + 5], held_cost)
      if redis.call('HEXISTS', KEYS[k + 2], held_bucket) == 1 then
        redis.call('HINCRBY', KEYS[k + 2], held_bucket, -tonumber(held_tokens))
      end
      redis.call('HDEL', KEYS[k + 4], id)
    end
    redis.call('ZREM', KEYS[k + 3], id)
  end
end

-- The level's first refusal, or nil; and its spend plus reservations (a: its limits in ARGV).
local function check(k, a, level)
  local rpm, tpm = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local conc, budget = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  sweep(k)
  local used = spent(k)
  if budget >= 0 and used >= budget then return {'quota', level, '0', fmt(now)}, used end
  if conc >= 0 and redis.call('ZCARD', KEYS[k + 3]) >= conc then
    return {'concurrency', level, '1', fmt(now)}, used
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[k + 1], '-inf', now - window)
  if rpm >= 0 then
    local n = redis.call('ZCARD', KEYS[k + 1])
    if n >= rpm then
      local oldest = redis.call('ZRANGE', KEYS[k + 1], n - rpm, n - rpm, 'WITHSCORES')
      return {'requests', level, fmt(tonumber(oldest[2]) + window - now), fmt(now)}, used
    end
  end
  local flat = redis.call('HGETALL', KEYS[k + 2])
  local counted, held = 0, {}
  for i = 1, #flat, 2 do
    local b = tonumber(flat[i])
    if b <= current - nbuckets then
      redis.call('HDEL', KEYS[k + 2], flat[i])
    else
      counted = counted + tonumber(flat[i + 1])
      held[#held + 1] = {b, tonumber(flat[i + 1])}
    end
  end
  if tpm >= 0 then
    if tokens > tpm then return {'too_large', level, '0', fmt(now)}, used end
    if counted + tokens > tpm then
      table.sort(held, function(x, y) return x[1] < y[1] end)
      local freed = 0
      for _, entry in ipairs(held) do
        freed = freed + entry[2]
        if counted - freed + tokens <= tpm then
          local wait = math.max((entry[1] + nbuckets) * bucket_s - now, 0)
          return {'tokens', level, fmt(wait), fmt(now)}, used
        end
      end
      return {'tokens', level, '1', fmt(now)}, used
    end
  end
  return nil, used
end

local function reserve(k)
  redis.call('ZADD', KEYS[k + 1], now, rid)
  redis.call('PEXPIRE', KEYS[k + 1], math.ceil(window * 1000) + 1000)
  redis.call('HINCRBY', KEYS[k + 2], current, tokens)
  redis.call('PEXPIRE', KEYS[k + 2], math.ceil(window * 1000) + 1000)
  redis.call('ZADD', KEYS[k + 3], now + lease, rid)
  redis.call('HSET', KEYS[k + 4], rid, tokens .. ' ' .. current .. ' ' .. cost)
  redis.call('INCRBY', KEYS[k + 5], cost)
end

local refused, used = check(0, 5, 'tenant')
local key_used
if keyed then
  local key_refused
  key_refused, key_used = check(6, 12, 'key')
  if key_refused and refused then
    local rank = {quota = 3, too_large = 2}
    local kr, tr = rank[key_refused[1]] or 1, rank[refused[1]] or 1
    if kr > tr or (kr == tr and (kr > 1 or tonumber(key_refused[3]) >= tonumber(refused[3]))) then
      refused = key_refused
    end
  elseif key_refused then
    refused = key_refused
  end
end
if refused then return refused end
reserve(0)
if keyed then
  reserve(6)
  return {'ok', fmt(now), int(used), int(key_used)}
end
return {'ok', fmt(now), int(used)}
"""

# KEYS: leases, holds, token buckets, reserved cost, spend by month, record, record index,
#       hour aggregate, tenant's backend-window shares, index of hours with usage, checkpoints;
#       for an admission that reserved at its key's own limits too, then the key's leases,
#       holds, token buckets, reserved cost and spend by month
# ARGV: rid, window_s, t_end, tokens, cost_nano, month, record, started_at,
#       cell ("backend|model|key|"), prompt, completion, weighted, model, retention_s, buckets,
#       late_after, hour
# Returns {0} for a repeat, {1, used[, key_used]} when settled, {2, used[, key_used]} when
# settled into an already reconcilable window; ``used`` is the month's spend plus outstanding
# reservations after it. What a checkpoint of the request already booked is subtracted: the
# ledger (and each level's spend) gets it once.
SETTLE = """
if redis.call('SET', KEYS[6], ARGV[7], 'NX', 'EX', ARGV[14]) == false then return {0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rid, window, nbuckets = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[15])
local bucket_s = window / nbuckets
local current = math.floor(now / bucket_s)
local done = math.min(math.floor(tonumber(ARGV[3]) / bucket_s), current)
local keyed = #KEYS > 11

-- Give back a level's hold and count the actual tokens in its buckets.
local function release(fl, res, tok, rcost)
  local hold = redis.call('HGET', KEYS[res], rid)
  if hold then
    local held_tokens, held_bucket, held_cost = string.match(hold, '(%S+) (%S+) (%S+)')
    redis.call('DECRBY', KEYS[rcost], held_cost)
    if redis.call('HEXISTS', KEYS[tok], held_bucket) == 1 then
      redis.call('HINCRBY', KEYS[tok], held_bucket, -tonumber(held_tokens))
    end
    redis.call('HDEL', KEYS[res], rid)
  end
  redis.call('ZREM', KEYS[fl], rid)
  if done > current - nbuckets then
    redis.call('HINCRBY', KEYS[tok], done, ARGV[4])
    redis.call('PEXPIRE', KEYS[tok], math.ceil(window * 1000) + 1000)
  end
end
release(1, 2, 3, 4)
if keyed then release(12, 13, 14, 15) end

local n, p, c = 1, tonumber(ARGV[10]), tonumber(ARGV[11])
local cost, wt = tonumber(ARGV[5]), tonumber(ARGV[12])
local booked = redis.call('HGET', KEYS[11], rid)
if booked then
  local bp, bc, bcost, bwt = string.match(booked, '(%S+) (%S+) (%S+) (%S+)')
  n, p, c = 0, p - tonumber(bp), c - tonumber(bc)
  cost, wt = cost - tonumber(bcost), wt - tonumber(bwt)
  redis.call('HDEL', KEYS[11], rid, 'rec:' .. rid)
end
local int = function(x) return string.format('%d', x) end
redis.call('HINCRBY', KEYS[5], ARGV[6], int(cost))
if keyed then redis.call('HINCRBY', KEYS[16], ARGV[6], int(cost)) end

redis.call('ZADD', KEYS[7], ARGV[8], rid)
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now - tonumber(ARGV[14]))
local cell = ARGV[9]
redis.call('HINCRBY', KEYS[8], cell .. 'n', n)
redis.call('HINCRBY', KEYS[8], cell .. 'p', int(p))
redis.call('HINCRBY', KEYS[8], cell .. 'c', int(c))
redis.call('HINCRBY', KEYS[8], cell .. 'cost', int(cost))
redis.call('ZADD', KEYS[10], ARGV[17], ARGV[17])
redis.call('HINCRBYFLOAT', KEYS[9], ARGV[13] .. '|wt', string.format('%.6f', wt))
redis.call('HINCRBY', KEYS[9], ARGV[13] .. '|pc', int(cost))
redis.call('EXPIRE', KEYS[9], ARGV[14])
local code = 1
if now >= tonumber(ARGV[16]) then code = 2 end
local used = tonumber(redis.call('HGET', KEYS[5], ARGV[6]) or '0')
  + tonumber(redis.call('GET', KEYS[4]) or '0')
if keyed then
  local key_used = tonumber(redis.call('HGET', KEYS[16], ARGV[6]) or '0')
    + tonumber(redis.call('GET', KEYS[15]) or '0')
  return {code, int(used), int(key_used)}
end
return {code, int(used)}
"""

# KEYS: holds, reserved cost, spend by month, record, checkpoints, hour aggregate, tenant's
#       backend-window shares, index of hours with usage; for an admission that reserved at its
#       key's own limits too, then the key's holds, reserved cost and spend by month
# ARGV: rid, prompt, completion, cost_nano, weighted, month, cell ("backend|model|key|"), model,
#       hour, retention_s, partial record, late_after
# Books what a live request has used so far, as the difference from its last checkpoint, so a
# replica that dies loses at most one heartbeat of usage; the part of each level's hold cost
# now spent is released. Returns 0 when the request has settled already, 1 when booked, 2 when
# booked into an already reconcilable window.
CHECKPOINT = """
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
local rid = ARGV[1]
local n, p, c = 1, tonumber(ARGV[2]), tonumber(ARGV[3])
local cost, wt = tonumber(ARGV[4]), tonumber(ARGV[5])
local booked = redis.call('HGET', KEYS[5], rid)
if booked then
  local bp, bc, bcost, bwt = string.match(booked, '(%S+) (%S+) (%S+) (%S+)')
  n, p, c = 0, p - tonumber(bp), c - tonumber(bc)
  cost, wt = cost - tonumber(bcost), wt - tonumber(bwt)
end
local int = function(x) return string.format('%d', x) end
redis.call('HSET', KEYS[5], rid, ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[4] .. ' ' .. ARGV[5],
           'rec:' .. rid, ARGV[11])
redis.call('EXPIRE', KEYS[5], ARGV[10])

-- Move what is spent now from a level's reservation to its spend.
local function spend(res, rcost, by_month)
  local hold = redis.call('HGET', KEYS[res], rid)
  if hold and cost > 0 then
    local held_tokens, held_bucket, held_cost = string.match(hold, '(%S+) (%S+) (%S+)')
    local release = math.min(tonumber(held_cost), cost)
    redis.call('DECRBY', KEYS[rcost], int(release))
    redis.call('HSET', KEYS[res], rid,
               held_tokens .. ' ' .. held_bucket .. ' ' .. int(tonumber(held_cost) - release))
  end
  redis.call('HINCRBY', KEYS[by_month], ARGV[6], int(cost))
end
spend(1, 2, 3)
if #KEYS > 8 then spend(9, 10, 11) end

local cell = ARGV[7]
redis.call('HINCRBY', KEYS[6], cell .. 'n', n)
redis.call('HINCRBY', KEYS[6], cell .. 'p', int(p))
redis.call('HINCRBY', KEYS[6], cell .. 'c', int(c))
redis.call('HINCRBY', KEYS[6], cell .. 'cost', int(cost))
redis.call('ZADD', KEYS[8], ARGV[9], ARGV[9])
redis.call('HINCRBYFLOAT', KEYS[7], ARGV[8] .. '|wt', string.format('%.6f', wt))
redis.call('HINCRBY', KEYS[7], ARGV[8] .. '|pc', int(cost))
redis.call('EXPIRE', KEYS[7], ARGV[10])
local t = redis.call('TIME')
if tonumber(t[1]) + tonumber(t[2]) / 1000000 >= tonumber(ARGV[12]) then return 2 end
return 1
"""

# KEYS: leases, then each request's record; ARGV: lease_s, then each request id. Renews the
# leases of this replica's live requests, and lists again one that is missing: it lapsed while
# Redis was away, or was admitted on local shares then. One that settled meanwhile (its record
# exists) stays out.
RENEW = """
local t = redis.call('TIME')
local deadline = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
for i = 2, #ARGV do
  if redis.call('EXISTS', KEYS[i]) == 0 then redis.call('ZADD', KEYS[1], deadline, ARGV[i]) end
end
return 1
"""

# KEYS: live replicas; ARGV: this replica's id, ttl_s. Announces the replica and returns how
# many replicas announced themselves within their TTL (this one included).
ANNOUNCE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""

# KEYS: tenant's backend-window shares, hour aggregate
# ARGV: model, reconciled_nano, cell ("backend|model|")
# Sets the model's adjustment to reconciled - provisional, moving the aggregate by the change.
BOOK = """
local provisional = tonumber(redis.call('HGET', KEYS[1], ARGV[1] .. '|pc') or '0')
local adjust = tonumber(ARGV[2]) - provisional
local previous = tonumber(redis.call('HGET', KEYS[1], ARGV[1] .. '|adj') or '0')
redis.call('HSET', KEYS[1], ARGV[1] .. '|adj', string.format('%d', adjust))
redis.call('HINCRBY', KEYS[2], ARGV[3] .. 'adj', string.format('%d', adjust - previous))
return 1
"""

# KEYS: a backend's window totals (fleet-wide)
# ARGV: requests, prompt, completion, weighted, instance_seconds ("" = not observed),
#       retention_s, late_after
# Adds one replica's token counts and keeps the most instance-seconds any replica observed (the
# replicas watch the same fleet). Returns 1 when that raised a window already reconcilable.
FLUSH = """
local key = KEYS[1]
if ARGV[1] ~= '0' then
  redis.call('HINCRBY', key, 'n', ARGV[1])
  redis.call('HINCRBY', key, 'p', ARGV[2])
  redis.call('HINCRBY', key, 'c', ARGV[3])
  redis.call('HINCRBYFLOAT', key, 'wt', ARGV[4])
end
local raised = false
if ARGV[5] ~= '' then
  local seen = redis.call('HGET', key, 'is')
  if seen == false or tonumber(ARGV[5]) > tonumber(seen) then
    redis.call('HSET', key, 'is', ARGV[5])
    raised = true
  end
end
redis.call('EXPIRE', key, ARGV[6])
if not raised then return 0 end
local t = redis.call('TIME')
if tonumber(t[1]) + tonumber(t[2]) / 1000000 >= tonumber(ARGV[7]) then return 1 end
return 0
"""

# KEYS: lock; ARGV: token. Deletes the lock only if this replica still holds it.
UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: the tenant's record; ARGV: created_at, limits JSON. Writes the whole record at once, or
# returns the one already there ({0, created_at, limits}); {1} when it created it. A record
# without limits (left half-made by an older gateway) is overwritten, so it can be re-created.
CREATE_TENANT = """
if redis.call('HEXISTS', KEYS[1], 'limits') == 1 then
  if redis.call('HEXISTS', KEYS[1], 'created_at') == 0 then
    redis.call('HSET', KEYS[1], 'created_at', ARGV[1])
  end
  return {0, redis.call('HGET', KEYS[1], 'created_at'), redis.call('HGET', KEYS[1], 'limits')}
end
redis.call('HSET', KEYS[1], 'created_at', ARGV[1], 'limits', ARGV[2])
return {1}
"""

# KEYS: a hash; ARGV: field, the value it was read with, the new value. Writes the field only if
# nobody changed it since it was read (compare and set); returns 1 if it did.
SWAP = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""
