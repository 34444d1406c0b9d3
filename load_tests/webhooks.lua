-- wrk script: replays pre-signed Twilio webhooks (SMS or voice), one per request, in file order.
--
--   wrk -t1 -c16 -d20s --latency -s webhooks.lua http://127.0.0.1:PORT \
--       -- REQUESTS_FILE once|cycle MAX_RESPONSES sms|voice
--
-- REQUESTS_FILE has one request per line: '<X-Twilio-Signature> <path> <form body>'
-- (traffic.py, voice_calls.py). 'once' sends every line at most once (unique MessageSids,
-- each step of a call once) and stops when the lines run out; 'cycle' starts over. The run
-- also stops after MAX_RESPONSES responses (0: no limit); an early stop is timed with
-- CLOCK_MONOTONIC, as wrk itself waits out the whole duration.
-- All requests are built in init(), so request() only hands out a prepared string.
-- Prints one line 'BENCH_JSON {...}' with throughput, latency percentiles, errors and what
-- the bodies said ("replies": self-service offers, queue replies, fallback apologies, ...).

local threads = {}
local ffi = require("ffi")
ffi.cdef[[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")

local function now_us()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

function setup(thread)
  table.insert(threads, thread)
end

local requests = {}
local n, i, mode, limit = 0, 0, "once", 0
-- Globals, so done() can read them through thread:get(). sent: lines handed out (once mode:
-- where a run continuing this file's conversations starts).
responses, non200, exhausted, sent = 0, 0, 0, 0
started_us, stopped_us = 0, 0  -- set when the run stops early (lines used up or MAX_RESPONSES)

-- Reply kinds per channel: the first rule whose text is in the body (or, with absent, is
-- not) names the reply; a body no rule matches is "other". Voice kinds are the ones
-- voice_calls.py expects.
local KINDS = {
  sms = {
    {"fallback", "something went wrong"},
    {"offered", "Did that help"},
    {"resolved", "glad that helped"},
    {"queued", "in line"},
    {"clarify", "not sure I understood"},
    {"empty", "<Message>", absent = true},
  },
  voice = {
    {"fallback", "technical trouble"},           -- a failed turn: apology + Enqueue
    {"enqueued", "<Enqueue"},                    -- escalated: Say + Enqueue
    {"offered", "Did that help"},                -- Gather: answer + yes/no
    {"resolved", "glad that helped"},            -- Say + Hangup
    {"welcome_back", "Welcome back"},            -- Gather: repeat caller
    {"reprompt", "didn't get that"},             -- Gather: menu again
    {"menu", "press 0"},                         -- Gather: the menu
    {"hold", "estimated wait"},                  -- wait URL: position + Pause
    {"hold_generic", "<Pause"},                  -- wait URL without a position
    {"hangup", "<Hangup"},                       -- queue result
    {"empty", "<Response />"},                   -- status callback
  },
}
local kinds = KINDS.sms
channel, replies = "sms", {}  -- replies: kind -> count

function init(args)
  local path = args[1]
  mode = args[2] or "once"
  limit = tonumber(args[3] or "0")
  channel = args[4] or "sms"
  kinds = KINDS[channel]
  for _, rule in ipairs(kinds) do replies[rule[1]] = 0 end
  replies.other = 0
  local host = wrk.headers["Host"] or (wrk.host .. ":" .. wrk.port)
  for line in io.lines(path) do
    local first = line:find(" ", 1, true)
    local second = line:find(" ", first + 1, true)
    n = n + 1
    requests[n] = wrk.format("POST", line:sub(first + 1, second - 1), {
      ["Host"] = host,
      ["Content-Type"] = "application/x-www-form-urlencoded",
      ["User-Agent"] = "TwilioProxy/1.1",
      ["Accept"] = "*/*",
      ["X-Twilio-Signature"] = line:sub(1, first - 1),
    }, line:sub(second + 1))
  end
end

function request()
  if i == 0 then started_us = now_us() end
  i = i + 1
  if i > n then
    if mode == "once" then
      if exhausted == 0 then stopped_us = now_us() end
      exhausted = 1
      wrk.thread:stop()
    end
    i = 1
  end
  if i > sent then sent = i end
  return requests[i]
end

local find = string.find

local function kind_of(body)
  for _, rule in ipairs(kinds) do
    local found = find(body, rule[2], 1, true) ~= nil
    if found ~= (rule.absent == true) then return rule[1] end
  end
  return "other"
end

function response(status, headers, body)
  responses = responses + 1
  if status ~= 200 then
    non200 = non200 + 1
  else
    local kind = kind_of(body)
    replies[kind] = replies[kind] + 1
  end
  if limit > 0 and responses >= limit then
    if stopped_us == 0 then stopped_us = now_us() end
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  -- done() runs in the main state: the channel and the counts live in the threads.
  local counters = {"responses", "non200", "exhausted", "sent"}
  local totals, sums = {}, {}
  for _, name in ipairs(counters) do totals[name] = 0 end
  local names = {}
  for _, rule in ipairs(KINDS[threads[1]:get("channel")]) do table.insert(names, rule[1]) end
  table.insert(names, "other")
  for _, name in ipairs(names) do sums[name] = 0 end
  -- A thread that stopped early ran for stopped - started, not for the whole duration.
  local duration = summary.duration
  for _, thread in ipairs(threads) do
    local started, stopped = thread:get("started_us"), thread:get("stopped_us")
    if stopped and stopped > 0 then duration = math.min(duration, stopped - started) end
    for _, name in ipairs(counters) do totals[name] = totals[name] + thread:get(name) end
    local counts = thread:get("replies")
    for _, name in ipairs(names) do sums[name] = sums[name] + counts[name] end
  end
  local e = summary.errors
  local parts = {
    string.format('"requests": %d', summary.requests),
    string.format('"duration_us": %d', duration),
    string.format('"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}',
                  e.connect, e.read, e.write, e.status, e.timeout),
    string.format('"latency_us": {"mean": %.1f, "max": %d, "p50": %d, "p90": %d, "p99": %d, "p999": %d}',
                  latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
                  latency:percentile(99), latency:percentile(99.9)),
  }
  for _, name in ipairs(counters) do
    table.insert(parts, string.format('"%s": %d', name, totals[name]))
  end
  local counts = {}
  for _, name in ipairs(names) do
    table.insert(counts, string.format('"%s": %d', name, sums[name]))
  end
  table.insert(parts, '"replies": {' .. table.concat(counts, ", ") .. '}')
  io.write("BENCH_JSON {" .. table.concat(parts, ", ") .. "}\n")
end
