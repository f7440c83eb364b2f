-- h3gate's shared limits: one script, three operations (ARGV[1]).
-- Rates' time is the Redis server's (TIME), in microseconds since EPOCH, so
-- the replicas' clocks never matter for them. Numbers are Lua doubles:
-- exact to 2^53 (us, tokens, nano-USD: a budget up to about $9M is exact).
--
-- consume: every claim of one request, decided together; written only if
--   all fit (a refusal takes nothing). KEYS[i] is claim i's key; ARGV from 2
--   holds each claim's fields, the first naming its kind:
--     'r', per_minute, burst, cost   GCRA bucket: the key holds its TAT, and
--                                    expires when the bucket is full again
--     'l', slots, lease id, ttl_ms   lease set: member = lease id, score =
--                                    its expiry; expired members removed here
--     'b', budget, cost, slot, slots, step, ends, now
--                                    budget: a hash slot -> spend; the window
--                                    (src/spend/period.rs, Unix seconds, the
--                                    replica's clock) says which slots count
--                                    (slot - slots + 1 and later) and where
--                                    the cost goes; older slots are dropped,
--                                    the key expires MARGIN after its newest
--                                    slot leaves the window
--   Returns 4 integers per claim: allowed (0/1), remaining, reset_us,
--   retry_after_us (as the in-memory limiter reports them).
-- correct: per correction:
--     'r', per_minute, delta         the bucket's TAT moved by delta tokens
--     'l', lease id                  the lease given back
--     'b', delta, slot, slots, step, ends, now
--                                    the claim's slot moved by delta (never
--                                    below 0), with the claim's window
-- renew: ARGV[2] = ttl_ms, then one lease id per key: each lease's expiry
--   set to now + ttl (re-adding it if Redis lost it).

local EPOCH = 1700000000
local EPS = 1e-3
-- A budget key outlives its newest slot by this long (seconds): replicas
-- whose clocks lag a little still find it, late corrections still land.
local MARGIN = 3600
local t = redis.call('TIME')
local now = (tonumber(t[1]) - EPOCH) * 1e6 + tonumber(t[2])
local op = ARGV[1]

local function stored_tat(k)
  local v = tonumber(redis.call('GET', k) or 0)
  if v < now then return now end
  return v
end

local function left(T, tau, ahead)
  local r = math.floor((tau - ahead) / T + 1e-9)
  if r < 0 then return 0 end
  return r
end

local function set_tat(k, tat)
  if tat > now then
    redis.call('SET', k, string.format('%.3f', tat), 'PX', math.max(1, math.ceil((tat - now) / 1000)))
  else
    redis.call('DEL', k)
  end
end

-- A budget's window from ARGV[at..at+4] (Window in src/spend/period.rs).
local function window(at)
  local w = {
    slot = tonumber(ARGV[at]), slots = tonumber(ARGV[at + 1]), step = tonumber(ARGV[at + 2]),
    ends = tonumber(ARGV[at + 3]), now = tonumber(ARGV[at + 4]),
  }
  w.first = math.max(0, w.slot - w.slots + 1)
  return w
end

-- Seconds from the window's now until slot s leaves it (Window::until_leaves).
local function until_leaves(w, s)
  local at = w.ends
  if w.slots > 1 then at = w.ends + (s + w.slots - 1 - w.slot) * w.step end
  return math.max(0, at - w.now)
end

-- The budget's slots in the window, oldest first ({slot, spend}), after
-- dropping the fields that left it (and any left at 0).
local function budget_slots(k, w)
  local all, slots = redis.call('HGETALL', k), {}
  for j = 1, #all, 2 do
    local s, used = tonumber(all[j]), tonumber(all[j + 1])
    if s == nil or used == nil or s < w.first or used <= 0 then
      redis.call('HDEL', k, all[j])
    else
      slots[#slots + 1] = {s, used}
    end
  end
  table.sort(slots, function(a, b) return a[1] < b[1] end)
  return slots
end

-- Expires the budget key MARGIN after its newest slot leaves (never sooner
-- than it was set to: a correction may carry an older window).
local function budget_expiry(k, w)
  local newest = nil
  for _, f in ipairs(redis.call('HKEYS', k)) do
    local s = tonumber(f)
    if s ~= nil and (newest == nil or s > newest) then newest = s end
  end
  if newest == nil then return end
  local ms = math.ceil((until_leaves(w, newest) + MARGIN) * 1000)
  if redis.call('PTTL', k) < ms then redis.call('PEXPIRE', k, ms) end
end

-- One budget claim (budget.rs `decide`): `slots` as budget_slots found them,
-- `pending` what earlier claims of the batch on the same key add.
local function budget_decide(slots, pending, budget, cost, w)
  local used = pending
  for _, e in ipairs(slots) do used = used + e[2] end
  if used >= budget or used + cost > budget then
    local rest, retry = used, until_leaves(w, w.slot)
    for _, e in ipairs(slots) do
      rest = rest - math.min(e[2], rest)
      if rest < budget and rest + cost <= budget then
        retry = until_leaves(w, e[1])
        break
      end
    end
    local reset = 0
    if used > 0 then
      local newest = w.slot
      if #slots > 0 then newest = slots[#slots][1] end
      reset = until_leaves(w, newest) * 1e6
    end
    return {0, math.max(0, budget - used), reset, math.max(retry, 1) * 1e6}
  end
  local after = used + cost
  local reset = 0
  if after > 0 then reset = until_leaves(w, w.slot) * 1e6 end
  return {1, budget - after, reset, 0}
end

-- Where each record of ARGV starts (records of `widths[kind]` fields).
local function offsets(widths)
  local at, b = {}, 2
  for i = 1, #KEYS do
    at[i] = b
    b = b + (widths[ARGV[b]] or 1)
  end
  return at
end

if op == 'consume' then
  local at = offsets({r = 4, l = 4, b = 8})
  local out, tat, held, spent, ok = {}, {}, {}, {}, true
  for i = 1, #KEYS do
    local k, b = KEYS[i], at[i]
    if ARGV[b] == 'r' then
      local T = 60e6 / tonumber(ARGV[b + 1])
      local tau = T * tonumber(ARGV[b + 2])
      local cur = tat[k] or stored_tat(k)
      local ahead = cur + tonumber(ARGV[b + 3]) * T - now
      if ahead > tau + EPS then
        ok = false
        out[i] = {0, left(T, tau, cur - now), cur - now, ahead - tau}
      else
        tat[k] = cur + tonumber(ARGV[b + 3]) * T
        out[i] = {1, left(T, tau, ahead), ahead, 0}
      end
    elseif ARGV[b] == 'b' then
      local w = window(b + 3)
      local s = spent[k]
      if s == nil then
        s = {slots = budget_slots(k, w), pending = 0}
        spent[k] = s
      end
      local cost = tonumber(ARGV[b + 2])
      out[i] = budget_decide(s.slots, s.pending, tonumber(ARGV[b + 1]), cost, w)
      if out[i][1] == 0 then ok = false end
      -- A later claim on the same key sees this one, fitting or not.
      s.pending = s.pending + cost
    else
      local slots = tonumber(ARGV[b + 1])
      local n = held[k]
      if n == nil then
        redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
        n = redis.call('ZCARD', k)
      end
      if n + 1 > slots then
        ok = false
        out[i] = {0, 0, 0, 1e6}
      else
        held[k] = n + 1
        out[i] = {1, slots - n - 1, 0, 0}
      end
    end
  end
  if ok then
    for k, v in pairs(tat) do set_tat(k, v) end
    for i = 1, #KEYS do
      local b = at[i]
      if ARGV[b] == 'l' then
        local ttl = tonumber(ARGV[b + 3])
        redis.call('ZADD', KEYS[i], now + ttl * 1000, ARGV[b + 2])
        redis.call('PEXPIRE', KEYS[i], ttl)
      elseif ARGV[b] == 'b' then
        if tonumber(ARGV[b + 2]) > 0 then
          redis.call('HINCRBY', KEYS[i], ARGV[b + 3], ARGV[b + 2])
        end
        budget_expiry(KEYS[i], window(b + 3))
      end
    end
  else
    -- Nothing taken: the claims that fit report their bucket as it is.
    for i = 1, #KEYS do
      local k, b = KEYS[i], at[i]
      if out[i][1] == 1 then
        if ARGV[b] == 'r' then
          local T = 60e6 / tonumber(ARGV[b + 1])
          local cur = stored_tat(k)
          out[i] = {1, left(T, T * tonumber(ARGV[b + 2]), cur - now), cur - now, 0}
        elseif ARGV[b] == 'b' then
          out[i][2] = math.min(out[i][2] + tonumber(ARGV[b + 2]), tonumber(ARGV[b + 1]))
        else
          out[i] = {1, tonumber(ARGV[b + 1]) - redis.call('ZCARD', k), 0, 0}
        end
      end
    end
  end
  local flat = {}
  for i = 1, #KEYS do
    flat[#flat + 1] = out[i][1]
    flat[#flat + 1] = out[i][2]
    flat[#flat + 1] = math.ceil(out[i][3])
    flat[#flat + 1] = math.ceil(out[i][4])
  end
  return flat
elseif op == 'correct' then
  local at = offsets({r = 3, l = 2, b = 7})
  for i = 1, #KEYS do
    local k, b = KEYS[i], at[i]
    if ARGV[b] == 'r' then
      local T = 60e6 / tonumber(ARGV[b + 1])
      set_tat(k, stored_tat(k) + tonumber(ARGV[b + 2]) * T)
    elseif ARGV[b] == 'b' then
      local w, delta, field = window(b + 2), tonumber(ARGV[b + 1]), ARGV[b + 2]
      local cur = tonumber(redis.call('HGET', k, field) or '')
      if cur ~= nil and cur + delta <= 0 then
        redis.call('HDEL', k, field)
      elseif cur ~= nil or delta > 0 then
        redis.call('HINCRBY', k, field, ARGV[b + 1])
      end
      budget_slots(k, w)
      budget_expiry(k, w)
    else
      redis.call('ZREM', k, ARGV[b + 1])
    end
  end
  return #KEYS
elseif op == 'renew' then
  local ttl = tonumber(ARGV[2])
  for i = 1, #KEYS do
    redis.call('ZADD', KEYS[i], now + ttl * 1000, ARGV[2 + i])
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
  return #KEYS
end
return redis.error_reply('h3gate limits: unknown operation')
