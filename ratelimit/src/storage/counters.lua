-- Evaluates and updates every counter of one request atomically.
-- Mirrors storage/memory.rs; the storage tests run the same cases against both.
--
-- KEYS, per counter: fixed window: the window's key; sliding window: current and previous
-- window keys; token bucket: the bucket key.
-- ARGV[1] = now in microseconds, ARGV[2] = mode: 0 independent, 1 all-or-nothing, 2 evaluate
-- without writing (Cluster's pre-check across slots), then per counter 7 values:
--   algorithm (1 fixed, 2 sliding, 3 token bucket), limit, period_ms, hits, burst,
--   ttl_ms (windows), elapsed_ms (time since the window started).
-- Reply, per counter: over_limit (0/1), used, remaining, reset_after in microseconds.

local now_us = tonumber(ARGV[1])
local all_or_nothing = ARGV[2] ~= '0'
local dry_run = ARGV[2] == '2'
local n = (#ARGV - 2) / 7

local function get(key)
  return tonumber(redis.call('GET', key) or '0')
end

local function apply(w)
  if w[1] == 'incr' then
    redis.call('INCRBY', w[2], w[3])
    redis.call('PEXPIRE', w[2], w[4])
  else
    redis.call('SET', w[2], string.format('%.0f', w[3]), 'PX', w[4])
  end
end

local reply = {}
local pending = {}
local any_over = false
local k = 1
for i = 1, n do
  local a = 2 + (i - 1) * 7
  local algorithm = tonumber(ARGV[a + 1])
  local limit = tonumber(ARGV[a + 2])
  local period = tonumber(ARGV[a + 3])
  local hits = tonumber(ARGV[a + 4])
  local burst = tonumber(ARGV[a + 5])
  local ttl = tonumber(ARGV[a + 6])
  local elapsed = tonumber(ARGV[a + 7])
  local over, used, remaining, reset, write

  if algorithm == 1 then
    local key = KEYS[k]
    k = k + 1
    used = get(key) + hits
    over = used > limit
    remaining = math.max(limit - used, 0)
    reset = (period - elapsed) * 1000
    if hits > 0 then write = {'incr', key, hits, ttl} end
  elseif algorithm == 2 then
    local current_key = KEYS[k]
    local previous_key = KEYS[k + 1]
    k = k + 2
    local current = get(current_key)
    local estimate = math.floor(get(previous_key) * (period - elapsed) / period) + current
    over = estimate + hits > limit
    if over then used = estimate else used = estimate + hits end
    remaining = math.max(limit - used, 0)
    reset = (period - elapsed) * 1000
    if not over and hits > 0 then write = {'incr', current_key, hits, ttl} end
  else
    local key = KEYS[k]
    k = k + 1
    local cost = period * 1000 / limit
    local tat = get(key)
    if tat < now_us then tat = now_us end
    local new_tat = tat + hits * cost
    local allow_at = new_tat - burst * cost
    if allow_at > now_us then
      over = true
      local available = math.max(math.floor((now_us - (tat - burst * cost)) / cost), 0)
      used = burst - math.min(available, burst)
      remaining = 0
      reset = math.ceil(allow_at - now_us)
    else
      over = false
      remaining = math.min(math.floor((now_us - allow_at) / cost), burst)
      used = burst - remaining
      reset = math.ceil(new_tat - now_us)
      if hits > 0 then
        write = {'set', key, math.ceil(new_tat), math.max(math.ceil((new_tat - now_us) / 1000), 1)}
      end
    end
  end

  if over then any_over = true end
  if write then
    if all_or_nothing then
      pending[#pending + 1] = write
    else
      apply(write)
    end
  end
  reply[#reply + 1] = over and 1 or 0
  reply[#reply + 1] = used
  reply[#reply + 1] = remaining
  reply[#reply + 1] = reset
end

if all_or_nothing and not any_over and not dry_run then
  for _, w in ipairs(pending) do apply(w) end
end
return reply
