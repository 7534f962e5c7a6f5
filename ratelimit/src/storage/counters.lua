-- Evaluates and updates the counters of one or more requests. Each request is atomic (the
-- whole call is); requests are processed in order. Mirrors storage/memory.rs; the storage
-- tests run the same cases against both.
--
-- KEYS, per counter: fixed window: the window's key; sliding window: current and previous
-- window keys; token bucket: the bucket key.
-- ARGV[1] = number of requests; then per request 3 values: now in microseconds, mode
-- (0 independent, 1 all-or-nothing, 2 evaluate without writing), number of counters; then
-- per counter 7 values: algorithm (1 fixed, 2 sliding, 3 token bucket), limit, period_ms,
-- hits, burst, ttl_ms (windows), elapsed_ms (time since the window started).
-- Reply, per counter in order: over_limit (0/1), used, remaining, reset_after in µs.

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
local k = 1 -- next KEYS index
local a = 2 -- next ARGV index

-- Evaluates one counter; returns over, used, remaining, reset (µs) and the write to make.
local function evaluate(now_us)
  local algorithm = tonumber(ARGV[a])
  local limit = tonumber(ARGV[a + 1])
  local period = tonumber(ARGV[a + 2])
  local hits = tonumber(ARGV[a + 3])
  local burst = tonumber(ARGV[a + 4])
  local ttl = tonumber(ARGV[a + 5])
  local elapsed = tonumber(ARGV[a + 6])
  a = a + 7

  if algorithm == 1 then
    local key = KEYS[k]
    k = k + 1
    local used = get(key) + hits
    local write
    if hits > 0 then write = {'incr', key, hits, ttl} end
    return used > limit, used, math.max(limit - used, 0), (period - elapsed) * 1000, write
  elseif algorithm == 2 then
    local current_key = KEYS[k]
    local previous_key = KEYS[k + 1]
    k = k + 2
    local current = get(current_key)
    local estimate = math.floor(get(previous_key) * (period - elapsed) / period) + current
    local reset = (period - elapsed) * 1000
    if estimate + hits > limit then
      return true, estimate, math.max(limit - estimate, 0), reset, nil
    end
    local write
    if hits > 0 then write = {'incr', current_key, hits, ttl} end
    return false, estimate + hits, limit - estimate - hits, reset, write
  else
    local key = KEYS[k]
    k = k + 1
    local cost = period * 1000 / limit
    local tat = math.max(get(key), now_us)
    local new_tat = tat + hits * cost
    local allow_at = new_tat - burst * cost
    if allow_at > now_us then
      local available = math.max(math.floor((now_us - (tat - burst * cost)) / cost), 0)
      return true, burst - math.min(available, burst), 0, math.ceil(allow_at - now_us), nil
    end
    local remaining = math.min(math.floor((now_us - allow_at) / cost), burst)
    local write
    if hits > 0 then
      write = {'set', key, math.ceil(new_tat), math.max(math.ceil((new_tat - now_us) / 1000), 1)}
    end
    return false, burst - remaining, remaining, math.ceil(new_tat - now_us), write
  end
end

for _ = 1, tonumber(ARGV[1]) do
  local now_us = tonumber(ARGV[a])
  local mode = ARGV[a + 1]
  local n = tonumber(ARGV[a + 2])
  a = a + 3
  local pending = {}
  local any_over = false
  for _ = 1, n do
    local over, used, remaining, reset, write = evaluate(now_us)
    if over then any_over = true end
    if write then
      if mode == '0' then apply(write) else pending[#pending + 1] = write end
    end
    reply[#reply + 1] = over and 1 or 0
    reply[#reply + 1] = used
    reply[#reply + 1] = remaining
    reply[#reply + 1] = reset
  end
  if mode == '1' and not any_over then
    for _, w in ipairs(pending) do apply(w) end
  end
end
return reply
