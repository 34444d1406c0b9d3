-- wrk script: replays pre-signed Twilio SMS webhooks, one per request, in file order.
--
--   wrk -t1 -c16 -d20s --latency -s sms_webhooks.lua http://127.0.0.1:PORT \
--       -- REQUESTS_FILE once|cycle MAX_RESPONSES
--
-- REQUESTS_FILE has one request per line: '<X-Twilio-Signature> <form body>' (traffic.py).
-- 'once' sends every line at most once (unique MessageSids) and stops when the lines run out;
-- 'cycle' starts over. The run also stops after MAX_RESPONSES responses (0: no limit); an
-- early stop is timed with CLOCK_MONOTONIC, as wrk itself waits out the whole duration.
-- All requests are built in init(), so request() only hands out a prepared string.
-- Prints one line 'BENCH_JSON {...}' with throughput, latency percentiles, errors and
-- what the bodies said (self-service offers, queue replies, fallback apologies, ...).

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
-- Globals, so done() can read them through thread:get().
responses, non200, exhausted = 0, 0, 0
started_us, stopped_us = 0, 0  -- set when the run stops early (lines used up or MAX_RESPONSES)
offered, resolved, queued, clarify, fallback, empty, other = 0, 0, 0, 0, 0, 0, 0

function init(args)
  local path = args[1]
  mode = args[2] or "once"
  limit = tonumber(args[3] or "0")
  local host = wrk.headers["Host"] or (wrk.host .. ":" .. wrk.port)
  for line in io.lines(path) do
    local space = line:find(" ", 1, true)
    n = n + 1
    requests[n] = wrk.format("POST", "/twilio/sms", {
      ["Host"] = host,
      ["Content-Type"] = "application/x-www-form-urlencoded",
      ["User-Agent"] = "TwilioProxy/1.1",
      ["Accept"] = "*/*",
      ["X-Twilio-Signature"] = line:sub(1, space - 1),
    }, line:sub(space + 1))
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
  return requests[i]
end

local find = string.find

function response(status, headers, body)
  responses = responses + 1
  if status ~= 200 then
    non200 = non200 + 1
  elseif find(body, "something went wrong", 1, true) then
    fallback = fallback + 1
  elseif find(body, "Did that help", 1, true) then
    offered = offered + 1
  elseif find(body, "glad that helped", 1, true) then
    resolved = resolved + 1
  elseif find(body, "in line", 1, true) then
    queued = queued + 1
  elseif find(body, "not sure I understood", 1, true) then
    clarify = clarify + 1
  elseif not find(body, "<Message>", 1, true) then
    empty = empty + 1
  else
    other = other + 1
  end
  if limit > 0 and responses >= limit then
    if stopped_us == 0 then stopped_us = now_us() end
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local totals = {}
  local names = {"responses", "non200", "exhausted", "offered", "resolved", "queued",
                 "clarify", "fallback", "empty", "other"}
  -- A thread that stopped early ran for stopped - started, not for the whole duration.
  local duration = summary.duration
  for _, thread in ipairs(threads) do
    local started, stopped = thread:get("started_us"), thread:get("stopped_us")
    if stopped and stopped > 0 then duration = math.min(duration, stopped - started) end
  end
  for _, name in ipairs(names) do totals[name] = 0 end
  for _, thread in ipairs(threads) do
    for _, name in ipairs(names) do totals[name] = totals[name] + (thread:get(name) or 0) end
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
  for _, name in ipairs(names) do
    table.insert(parts, string.format('"%s": %d', name, totals[name]))
  end
  io.write("BENCH_JSON {" .. table.concat(parts, ", ") .. "}\n")
end
