-- wrk script: POST one real image per request, count HTTP statuses, report JSON.
--
-- Configured through environment variables (wrk passes no structured options to Lua):
--   BENCH_BODY          file holding the exact request body (raw BMP, or a prebuilt multipart body)
--   BENCH_CONTENT_TYPE  Content-Type header, e.g. "image/bmp" or "multipart/form-data; boundary=..."
--   BENCH_HEADERS       optional further headers, one "Name: value" per line (the KServe v2 body
--                       of the Triton peer needs Inference-Header-Content-Length)
--   BENCH_MAX_REQUESTS  per-thread cap on responses (bounds the run in count as well as time).
--                       Soft by up to connections - 1: thread:stop() ends the event loop after
--                       the current pass, and responses already read in that pass still count.
--   BENCH_WRK_JSON      where done() writes the summary as JSON
--   BENCH_HEADERS       optional extra headers, one "Name: value" per line (e.g. Accept)

local body_path = assert(os.getenv("BENCH_BODY"), "BENCH_BODY not set")
local f = assert(io.open(body_path, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = assert(os.getenv("BENCH_CONTENT_TYPE"), "BENCH_CONTENT_TYPE not set")
for line in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^\n]+") do
  local name, value = string.match(line, "^([^:]+):%s*(.*)$")
  wrk.headers[assert(name, "BENCH_HEADERS line without a colon")] = value
end

local max_requests = tonumber(os.getenv("BENCH_MAX_REQUESTS") or "0")
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  responses = 0
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  responses = responses + 1
  if max_requests > 0 and responses >= max_requests then
    wrk.thread:stop()
  end
end

local function json_object(t)
  local parts = {}
  for k, v in pairs(t) do
    table.insert(parts, string.format("%q: %s", tostring(k), tostring(v)))
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, requests)
  local all_statuses = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses") or {}) do
      all_statuses[k] = (all_statuses[k] or 0) + v
    end
  end
  local pct = {}
  for _, p in ipairs({50, 90, 95, 99, 99.9}) do
    pct[string.format("p%s", p)] = latency:percentile(p)
  end
  local out = string.format(
    '{"duration_us": %d, "requests": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"statuses": %s, "latency_us": {"min": %d, "max": %d, "mean": %f, "stdev": %f, "percentiles": %s}}',
    summary.duration, summary.requests, summary.bytes,
    summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout,
    json_object(all_statuses),
    latency.min, latency.max, latency.mean, latency.stdev, json_object(pct))
  local path = os.getenv("BENCH_WRK_JSON")
  if path then
    local o = assert(io.open(path, "w"))
    o:write(out)
    o:close()
  else
    io.write(out .. "\n")
  end
end
