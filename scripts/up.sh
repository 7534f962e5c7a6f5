#!/usr/bin/env bash
# `make up`: the local gateway on embedded defaults, no Redis needed.
#   Envoy (envoy/gateway.yaml) on :10000 -> demo upstream (Envoy's own :10001)
#   gatehouse-ratelimit on :8081 (gRPC), :8080 (/healthcheck, /json), :6070 (/rlconfig, /metrics),
#   in-memory counters, rules from examples/ratelimit/config/.
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-test-deps.sh
echo "[up] building gatehouse-ratelimit"
cargo build -q -p gatehouse-ratelimit

run=.run
mkdir -p "$run"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

RUNTIME_ROOT="$PWD/examples/ratelimit" \
GRPC_HOST=127.0.0.1 GRPC_PORT=8081 HOST=127.0.0.1 PORT=8080 DEBUG_HOST=127.0.0.1 DEBUG_PORT=6070 \
LIMIT_RESPONSE_HEADERS_ENABLED=true LOG_LEVEL="${LOG_LEVEL:-info}" \
    target/debug/gatehouse-ratelimit >"$run/ratelimit.log" 2>&1 &
pids+=($!)

ENVOY_ADMIN_PORT=9901 GATEWAY_PORT=10000 DEMO_UPSTREAM_PORT=10001 \
UPSTREAM_HOST=127.0.0.1 UPSTREAM_PORT=10001 RATELIMIT_HOST=127.0.0.1 RATELIMIT_PORT=8081 \
RATELIMIT_FAILURE_MODE_DENY=false \
    scripts/render-envoy.sh envoy/gateway.yaml "$run/envoy.yaml"
.venv/bin/envoy -c "$run/envoy.yaml" --disable-hot-restart -l warning >"$run/envoy.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
    if curl -fs -o /dev/null http://127.0.0.1:8080/healthcheck && curl -fs -o /dev/null http://127.0.0.1:9901/ready; then
        break
    fi
    sleep 0.2
done
curl -fs -o /dev/null http://127.0.0.1:9901/ready || { echo "[up] envoy did not start; see $run/envoy.log" >&2; exit 1; }

cat <<'TXT'

Gatehouse is up. Logs in .run/. Try:

  # 3 per minute: two 200s, then 429 with RateLimit-* headers
  for i in 1 2 3 4; do curl -s -o /dev/null -D - http://127.0.0.1:10000/rl/generic | grep -Ei '^(HTTP|ratelimit)'; done

  # per API key: 2 per second and 20 per minute
  curl -i -H 'x-api-key: demo-key' http://127.0.0.1:10000/rl/header

  # the loaded rules, and metrics
  curl http://127.0.0.1:6070/rlconfig
  curl -s http://127.0.0.1:6070/metrics | grep ratelimit_service_rate_limit

Ctrl-C to stop.
TXT
wait -n "${pids[@]}"
