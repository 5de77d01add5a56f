-- wrk's script for `bench/ingest.py --client wrk`: one thread sends, in order and each
-- once, the pre-signed deliveries of the file named by its argument (each followed by
-- three NUL bytes), so that every idempotency key is new. At the end it prints what the
-- benchmark reads: completed requests, answers other than 2xx and 3xx, socket errors,
-- whether the file ran out, and the latency histogram (microseconds and count).

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  deliveries = {}
  local file = assert(io.open(args[1], "rb"))
  local data = file:read("*a")
  file:close()
  for delivery in string.gmatch(data, "(.-)%z%z%z") do
    deliveries[#deliveries + 1] = delivery
  end
  sent = 0
  ran_out = 0
end

function request()
  sent = sent + 1
  if sent > #deliveries then
    -- Repeating a key would be answered as a duplicate: counted, and refused by the
    -- benchmark.
    ran_out = ran_out + 1
    return deliveries[#deliveries]
  end
  return deliveries[sent]
end

function done(summary, latency, requests)
  local ran_out = 0
  for _, thread in ipairs(threads) do
    ran_out = ran_out + thread:get("ran_out")
  end
  local errors = summary.errors
  io.write(string.format("bench requests %d\n", summary.requests))
  io.write(string.format("bench duration_us %d\n", summary.duration))
  io.write(string.format("bench non2xx %d\n", errors.status))
  io.write(string.format(
    "bench socket_errors %d\n", errors.connect + errors.read + errors.write + errors.timeout
  ))
  io.write(string.format("bench ran_out %d\n", ran_out))
  -- #latency is the number of distinct values; latency(i) the i-th and its count (wrk 4.1)
  for i = 1, #latency do
    local us, count = latency(i)
    io.write(string.format("bench latency %d %d\n", us, count))
  end
end
