#!/usr/bin/env bash
# Load benchmark of ShouldRateLimit with h2load and a pre-encoded gRPC body, on the memory
# and Redis backends. Prints h2load's summary for each; results go in BENCHMARKS.md.
#
#   scripts/bench-ratelimit.sh            # defaults below
#   N=200000 C=16 M=16 scripts/bench-ratelimit.sh
#   TRACING=1 scripts/bench-ratelimit.sh  # only memory, with tracing off and then on (100%
#                                         # sampling, to a span-counting OTLP sink), interleaved,
#                                         # over gRPC and then through Envoy (wrk);
#                                         # BASE_BIN=<a release binary of an older commit> adds
#                                         # it to each gRPC round, for an A/B of tracing off
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=${N:-200000}
C=${C:-16}
M=${M:-16}
source scripts/lib/bench.sh

cargo build -q --release -p gatehouse-ratelimit --bin gatehouse-ratelimit --example noop_server
bin=target/release/gatehouse-ratelimit

mkdir -p "$work/rt/config"
cat >"$work/rt/config/bench.yaml" <<'YAML'
domain: bench
descriptors:
  - key: generic_key
    value: bench
    rate_limit: { unit: second, requests_per_unit: 1000000000 }
YAML

# RateLimitRequest{domain: "bench", descriptors: [{entries: [{key: "generic_key", value: "bench"}]}]}
# as one length-prefixed gRPC message.
python3 - "$work/req.bin" <<'PY'
import struct, sys
def field(num, payload):
    return bytes([(num << 3) | 2, len(payload)]) + payload
entry = field(1, b"generic_key") + field(2, b"bench")
descriptor = field(1, entry)
request = field(1, b"bench") + field(2, descriptor)
open(sys.argv[1], "wb").write(b"\x00" + struct.pack(">I", len(request)) + request)
PY

# run NAME [ENV=VALUE...]: the service with that environment; NAME "ceiling" runs the no-op
# tonic server instead, the upper bound for this machine at this moment.
run() {
    local name=$1; shift
    local port; port=$(free_port)
    if [ "$name" = ceiling ]; then
        target/release/examples/noop_server "127.0.0.1:$port" &
    else
        env RUNTIME_ROOT="$work/rt" GRPC_HOST=127.0.0.1 GRPC_PORT="$port" HOST=127.0.0.1 PORT=0 \
            DEBUG_HOST=127.0.0.1 DEBUG_PORT=0 LOG_LEVEL=error "$@" "$bin" &
    fi
    pids+=($!)
    for _ in $(seq 1 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    echo "--- $name: RSS idle: $(awk '/VmRSS/{print $2" "$3}' "/proc/${pids[-1]}/status")"
    local url="http://127.0.0.1:$port/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
    # Warm-up, then the measured run.
    h2load -n 20000 -c "$C" -m "$M" -t 1 -d "$work/req.bin" -H 'content-type: application/grpc' -H 'te: trailers' "$url" >/dev/null
    local h2=(h2load -c "$C" -m "$M" -t 1 -d "$work/req.bin" -H 'content-type: application/grpc' -H 'te: trailers')
    echo "=== $name: h2load -n $N -c $C -m $M -t 1 -d req.bin -H 'content-type: application/grpc' -H 'te: trailers' $url"
    "${h2[@]}" -n "$N" "$url" | grep -E '^(finished in|requests:|status codes:|time for request:)'
    # Latency in a separate run: h2load's per-request log costs client CPU. It holds start
    # time, status and latency in microseconds, one request per line.
    "${h2[@]}" -n "$((N / 2))" --log-file="$work/$name.log" "$url" >/dev/null
    python3 - "$work/$name.log" <<'PY'
import sys
lat = sorted(int(line.split()[2]) for line in open(sys.argv[1]) if line.strip())
pct = lambda p: lat[min(len(lat) - 1, int(len(lat) * p))] / 1000
print(f"latency ms ({len(lat)} requests, {sys.argv[1].rsplit('/', 1)[-1]}): p50 {pct(0.50):.2f}  p90 {pct(0.90):.2f}  p99 {pct(0.99):.2f}  max {lat[-1] / 1000:.2f}")
PY
    echo "RSS after the runs: $(awk '/VmRSS/{print $2" "$3}' "/proc/${pids[-1]}/status")"
    kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
}

# run_envoy NAME [ENV=VALUE...]: the service with that environment behind Envoy
# (envoy/bench/ratelimit.yaml, --concurrency 1) and wrk -t1 -c32 -d10s through it; req/s,
# latency and CPU per request of Envoy and of the service. Fails unless Envoy's filter got an
# OK from the service for every request.
run_envoy() {
    local name=$1; shift
    local port; port=$(free_port)
    env RUNTIME_ROOT="$work/rt" GRPC_HOST=127.0.0.1 GRPC_PORT="$port" HOST=127.0.0.1 PORT=0 \
        DEBUG_HOST=127.0.0.1 DEBUG_PORT=0 LOG_LEVEL=error "$@" "$bin" &
    local service_pid=$!
    pids+=("$service_pid")
    wait_port "$port"
    start_envoy "$name" envoy/bench/ratelimit.yaml 1 RATELIMIT_PORT="$port"
    local url="http://127.0.0.1:$envoy_port/"
    wrk -t1 -c32 -d2s "$url" >/dev/null
    local ok_before e_ticks s_ticks
    ok_before=$(ratelimit_ok "$envoy_admin")
    e_ticks=$(cpu_ticks "$envoy_pid"); s_ticks=$(cpu_ticks "$service_pid")
    wrk -t1 -c32 -d10s --latency "$url" >"$work/$name.wrk"
    local e_ms s_ms; e_ms=$(cpu_ms "$envoy_pid" "$e_ticks"); s_ms=$(cpu_ms "$service_pid" "$s_ticks")
    local rps requests non2xx ok
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$work/$name.wrk")
    requests=$(awk '/requests in/ { print $1 }' "$work/$name.wrk")
    non2xx=$(awk '/Non-2xx/ { print $NF }' "$work/$name.wrk")
    ok=$(($(ratelimit_ok "$envoy_admin") - ok_before))
    local lat; lat=$(awk '$1 ~ /^(50|90|99)%$/ { printf "p%s %s  ", substr($1, 1, length($1) - 1), $2 }' "$work/$name.wrk")
    echo "=== $name: wrk -t1 -c32 -d10s --latency http://127.0.0.1:PORT/ through Envoy"
    printf '%s %s req/s  %s non-2xx %s  CPU/request: envoy %s µs, ratelimit %s µs  ratelimit.ok %s\n' \
        "$name" "$rps" "$lat" "${non2xx:-0}" "$((e_ms * 1000 / requests))" "$((s_ms * 1000 / requests))" "$ok"
    [ -z "$non2xx" ] || fail "$name: non-2xx responses"
    [ "$ok" -ge "$requests" ] || fail "$name: $requests requests but $ok rate-limit answers"
    kill "$envoy_pid" "$service_pid"; wait "$envoy_pid" "$service_pid" 2>/dev/null || true
}
# ratelimit_ok ADMIN_PORT: OK answers the filter got (counted under the route's cluster).
ratelimit_ok() { curl -fs "http://127.0.0.1:$1/stats?filter=^cluster\.upstream\.ratelimit\.ok$" | awk '{ print $2 + 0 }'; }

if [ "${TRACING:-}" = 1 ]; then
    cargo build -q --release -p gatehouse-testkit --example otlp_sink
    sink_port=$(free_port)
    target/release/examples/otlp_sink "127.0.0.1:$sink_port" >"$work/sink.log" &
    pids+=($!)
    # Off and on twice each, alternating, so that drift in the machine's speed hits both.
    for round in 1 2; do
        if [ -n "${BASE_BIN:-}" ]; then
            bin=$BASE_BIN run "memory-base-$round" BACKEND_TYPE=memory
        fi
        run "memory-tracing-off-$round" BACKEND_TYPE=memory
        run "memory-tracing-on-$round" BACKEND_TYPE=memory OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sink_port" \
            OTEL_TRACES_SAMPLER=always_on
    done
    # Through Envoy: the ratelimit filter asks the service before proxying to a plain upstream.
    unset upstream_port
    start_envoy upstream envoy/bench/transform-upstream.yaml 1
    upstream_port=$envoy_port
    for round in 1 2; do
        run_envoy "envoy-tracing-off-$round" BACKEND_TYPE=memory
        run_envoy "envoy-tracing-on-$round" BACKEND_TYPE=memory OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sink_port" \
            OTEL_TRACES_SAMPLER=always_on
    done
    sleep 2
    echo "spans the sink received: $(tail -n 1 "$work/sink.log")"
    exit 0
fi

run ceiling
run memory BACKEND_TYPE=memory

redis_port=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no >/dev/null &
pids+=($!)
sleep 0.5
run redis BACKEND_TYPE=redis REDIS_URL="127.0.0.1:$redis_port" REDIS_POOL_SIZE="${REDIS_POOL_SIZE:-2}"
