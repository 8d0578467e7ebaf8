-- wrk script for `npm run bench`: the same request to every HTTP path (direct, tether
-- service-relay, nginx, Go ReverseProxy). The caller token is read from the file named by
-- BENCH_TOKEN_FILE, so it never appears on a command line; the routing headers name the
-- backend Service the way the hosted service-proxy does. Paths other than the relay ignore them.
-- BENCH_ROUTE=apiserver names the kube-apiserver instead (the service proxy's impersonated
-- requests); BENCH_ROUTE=relay a Service (the service proxy's Relay-mode requests).
local token_file = os.getenv("BENCH_TOKEN_FILE")
local port = os.getenv("BENCH_BACKEND_PORT") or "80"
if token_file then
  local f = assert(io.open(token_file, "r"))
  local token = f:read("*l")
  f:close()
  wrk.headers["Authorization"] = "Bearer " .. token
end
local route = os.getenv("BENCH_ROUTE")
if route == "apiserver" then
  wrk.headers["Cluster-Proxy-Proto"] = "https"
  wrk.headers["Cluster-Proxy-Namespace"] = "default"
  wrk.headers["Cluster-Proxy-Service"] = "kubernetes"
  wrk.headers["Cluster-Proxy-Port"] = "443"
else
  wrk.headers["Cluster-Proxy-Proto"] = "http"
  wrk.headers["Cluster-Proxy-Namespace"] = "default"
  wrk.headers["Cluster-Proxy-Service"] = "bench"
  wrk.headers["Cluster-Proxy-Port"] = route == "relay" and "8080" or port
end

-- One JSON line with what the driver needs, and the latency histogram (distinct values in
-- microseconds with their counts) so the driver can pool rounds; latencies in microseconds.
function done(summary, latency, requests)
  local buckets = {}
  for i = 1, #latency do
    local value, count = latency(i)
    buckets[i] = string.format("%d:%d", value, count)
  end
  io.write("BENCH_HISTOGRAM ", table.concat(buckets, ","), "\n")
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"durationUs":%d,"bytes":%d,"p50us":%d,"p90us":%d,"p99us":%d,"maxus":%d,' ..
    '"connectErrors":%d,"readErrors":%d,"writeErrors":%d,"statusErrors":%d,"timeouts":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
