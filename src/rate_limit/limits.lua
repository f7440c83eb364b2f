-- h3gate's shared rate limits: one script, three operations (ARGV[1]).
-- Time is the Redis server's (TIME), in microseconds since EPOCH, so the
-- replicas' clocks never matter. Numbers are Lua doubles: exact to 2^53 us.
--
-- consume: every claim of one request, decided together; written only if
--   all fit (a refusal takes nothing). KEYS[i] is claim i's key; ARGV from 2
--   holds 4 fields per claim:
--     'r', per_minute, burst, cost   GCRA bucket: the key holds its TAT, and
--                                    expires when the bucket is full again
--     'l', slots, lease id, ttl_ms   lease set: member = lease id, score =
--                                    its expiry; expired members removed here
--   Returns 4 integers per claim: allowed (0/1), remaining, reset_us,
--   retry_after_us (as the in-memory limiter reports them).
-- correct: 3 fields per correction:
--     'r', per_minute, delta         the bucket's TAT moved by delta tokens
--     'l', lease id, ''              the lease given back
-- renew: ARGV[2] = ttl_ms, then one lease id per key: each lease's expiry
--   set to now + ttl (re-adding it if Redis lost it).

local EPOCH = 1700000000
local EPS = 1e-3
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

if op == 'consume' then
  local out, tat, held, ok = {}, {}, {}, true
  for i = 1, #KEYS do
    local k, b = KEYS[i], 2 + (i - 1) * 4
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
      local b = 2 + (i - 1) * 4
      if ARGV[b] == 'l' then
        local ttl = tonumber(ARGV[b + 3])
        redis.call('ZADD', KEYS[i], now + ttl * 1000, ARGV[b + 2])
        redis.call('PEXPIRE', KEYS[i], ttl)
      end
    end
  else
    -- Nothing taken: the claims that fit report their bucket as it is.
    for i = 1, #KEYS do
      local k, b = KEYS[i], 2 + (i - 1) * 4
      if out[i][1] == 1 then
        if ARGV[b] == 'r' then
          local T = 60e6 / tonumber(ARGV[b + 1])
          local cur = stored_tat(k)
          out[i] = {1, left(T, T * tonumber(ARGV[b + 2]), cur - now), cur - now, 0}
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
  for i = 1, #KEYS do
    local k, b = KEYS[i], 2 + (i - 1) * 3
    if ARGV[b] == 'r' then
      local T = 60e6 / tonumber(ARGV[b + 1])
      set_tat(k, stored_tat(k) + tonumber(ARGV[b + 2]) * T)
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
