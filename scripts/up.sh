#!/usr/bin/env bash
# `make up`: the local gateway on embedded defaults, no Redis needed.
#   Envoy (envoy/gateway.yaml) on :10000, and over mTLS on :10443 -> an upstream on :10002 that
#   answers with the request it received (tests/src/echo.rs), so transformations are visible.
#   gatehouse-ratelimit on :8081 (gRPC), :8080 (/healthcheck, /json), :6070 (/rlconfig, /metrics),
#   in-memory counters, rules from examples/ratelimit/config/.
#   gatehouse-extauth on :9191 (gRPC ext_authz), :9192 (forward-auth, /healthcheck,
#   /config-status, /metrics, /.well-known/jwks.json), policies from examples/extauth/policies.yaml.
#   gatehouse-transform on :9291 (gRPC ext_proc), :9292 (/healthcheck, /config-status, /metrics),
#   transformations from examples/transform/transformations.yaml.
#   A throwaway CA, server and client certificate in .run/pki/ (made once).
#   The test OpenID provider (tests/oidc/provider.mjs) on :9000, for the browser login on
#   http://localhost:10000/app/ (any user name and password log in).
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-test-deps.sh
echo "[up] building gatehouse-ratelimit, gatehouse-extauth, gatehouse-transform and the echo upstream"
cargo build -q -p gatehouse-ratelimit -p gatehouse-extauth -p gatehouse-transform
cargo build -q -p gatehouse-testkit --example echo

run=.run
mkdir -p "$run"

# The mTLS listener's PKI (scripts/demo-pki.sh), made once.
pki="$run/pki"
if [ ! -s "$pki/client.crt" ]; then
    echo "[up] making a throwaway CA and certificates in $pki"
    scripts/demo-pki.sh "$pki"
fi

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

EXTAUTH_CONFIG=examples/extauth/policies.yaml \
GRPC_HOST=127.0.0.1 GRPC_PORT=9191 HOST=127.0.0.1 PORT=9192 LOG_LEVEL="${LOG_LEVEL:-info}" \
    target/debug/gatehouse-extauth >"$run/extauth.log" 2>&1 &
pids+=($!)

TRANSFORM_CONFIG=examples/transform/transformations.yaml TRANSFORM_TEMPLATE_ENV=STAGE STAGE=demo \
GRPC_HOST=127.0.0.1 GRPC_PORT=9291 HOST=127.0.0.1 PORT=9292 LOG_LEVEL="${LOG_LEVEL:-info}" \
    target/debug/gatehouse-transform >"$run/transform.log" 2>&1 &
pids+=($!)

target/debug/examples/echo 127.0.0.1:10002 >"$run/echo.log" 2>&1 &
pids+=($!)

OIDC_POST_LOGOUT_REDIRECT_URIS=http://localhost:10000/app/ OIDC_EXIT_WITH_PARENT=1 \
    node tests/oidc/provider.mjs 9000 >"$run/oidc.log" 2>&1 &
pids+=($!)

LISTEN_ADDRESS=127.0.0.1 CLUSTER_TYPE=STATIC ENVOY_ADMIN_PORT=9901 GATEWAY_PORT=10000 GATEWAY_MTLS_PORT=10443 DEMO_UPSTREAM_PORT=10001 \
UPSTREAM_HOST=127.0.0.1 UPSTREAM_PORT=10002 RATELIMIT_HOST=127.0.0.1 RATELIMIT_PORT=8081 \
RATELIMIT_FAILURE_MODE_DENY=false \
EXTAUTH_HOST=127.0.0.1 EXTAUTH_PORT=9191 EXTAUTH_HTTP_PORT=9192 EXTAUTH_FAILURE_MODE_ALLOW=false \
TRANSFORM_HOST=127.0.0.1 TRANSFORM_PORT=9291 TRANSFORM_FAILURE_MODE_ALLOW=false \
TLS_CERT_FILE="$PWD/$pki/server.crt" TLS_KEY_FILE="$PWD/$pki/server.key" TLS_CA_FILE="$PWD/$pki/ca.crt" \
    scripts/render-envoy.sh envoy/gateway.yaml "$run/envoy.yaml"
# With OTEL_EXPORTER_OTLP_ENDPOINT set (an OTLP/gRPC collector, e.g. http://127.0.0.1:4317), the
# services export their spans there (they read the variable themselves) and Envoy's optional
# tracer is switched on, pointed at the same collector: one trace per request.
if [ -n "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" ]; then
    hostport=${OTEL_EXPORTER_OTLP_ENDPOINT#*://}
    hostport=${hostport%%/*}
    otel_host=${hostport%:*}
    otel_port=${hostport##*:}
    [ "$otel_port" != "$hostport" ] || otel_port=4317
    echo "[up] tracing: Envoy and the services export to $otel_host:$otel_port"
    # Uncomment the blocks between the `--- begin/end optional tracing ---` markers.
    awk -v host="$otel_host" -v port="$otel_port" '
        /# --- begin optional tracing ---/ { inside = 1; next }
        /# --- end optional tracing ---/ { inside = 0; next }
        inside {
            match($0, /^ */); indent = substr($0, 1, RLENGTH); body = substr($0, RLENGTH + 1)
            sub(/^# ?/, "", body)
            sub(/address: 127\.0\.0\.1/, "address: " host, body)
            sub(/port_value: 4317/, "port_value: " port, body)
            print indent body; next
        }
        { print }' "$run/envoy.yaml" >"$run/envoy.yaml.tmp"
    mv "$run/envoy.yaml.tmp" "$run/envoy.yaml"
fi
.venv/bin/envoy -c "$run/envoy.yaml" --disable-hot-restart -l warning >"$run/envoy.log" 2>&1 &
pids+=($!)

ready() {
    curl -fs -o /dev/null http://127.0.0.1:8080/healthcheck \
        && curl -fs -o /dev/null http://127.0.0.1:9192/healthcheck \
        && curl -fs -o /dev/null http://127.0.0.1:9292/healthcheck \
        && curl -fs -o /dev/null http://127.0.0.1:9901/ready \
        && curl -fs -o /dev/null http://127.0.0.1:9000/.well-known/openid-configuration
}
for _ in $(seq 1 100); do
    if ready; then break; fi
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || { echo "[up] a service exited; see $run/*.log" >&2; exit 1; }
    done
    sleep 0.2
done
ready || { echo "[up] not ready after 20s; see $run/*.log" >&2; exit 1; }

cat <<'TXT'

Gatehouse is up. Logs in .run/. Try:

  # rate limiting: 3 per minute, then 429 with RateLimit-* headers
  for i in 1 2 3 4; do curl -s -o /dev/null -D - http://127.0.0.1:10000/rl/generic | grep -Ei '^(HTTP|ratelimit)'; done

  # per API key: 2 per second and 20 per minute
  curl -i -H 'x-api-key: demo-key' http://127.0.0.1:10000/rl/header

  # extauth: no key -> 401 with WWW-Authenticate and a JSON reason
  curl -i http://127.0.0.1:10000/auth/keys
  # the demo key (header or ?api_key=) -> 200 from the demo upstream
  curl -i -H 'x-api-key: demo-key' http://127.0.0.1:10000/auth/keys
  curl -i 'http://127.0.0.1:10000/auth/keys?api_key=demo-key'
  # basic auth -> 200; a wrong password -> 401
  curl -i -u demo:demo-password http://127.0.0.1:10000/auth/basic
  # rules: GET passes, POST is denied by the `read-only` rule -> 403
  curl -i -H 'x-api-key: demo-key' http://127.0.0.1:10000/auth/rules
  curl -i -X POST -H 'x-api-key: demo-key' http://127.0.0.1:10000/auth/rules
  # no policy on the route: chosen by host (401 from `keys`); an unknown host -> 403
  curl -i -H 'host: keys.gatehouse.test' http://127.0.0.1:10000/auth/host
  curl -i http://127.0.0.1:10000/auth/host
  # anonymous -> 200; a client certificate (SPIFFE ID) on the mTLS listener -> 200
  curl -i http://127.0.0.1:10000/auth/public
  curl -i --cacert .run/pki/ca.crt --cert .run/pki/client.crt --key .run/pki/client.key https://127.0.0.1:10443/auth/mtls
  # the same key check over HTTP forward-auth (what NGINX, Traefik and HAProxy call)
  curl -i -H 'x-api-key: demo-key' http://127.0.0.1:9192/forward-auth/keys/some/path
  # limits keyed on the API key id from extauth's metadata: 5 per minute, then 429
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{http_code}\n' -H 'x-api-key: demo-key' http://127.0.0.1:10000/auth/limited; done

  # transformations (gatehouse-transform, ext_proc); the upstream echoes what it received
  # headers set/appended/removed/renamed, and a response header added
  curl -i -H 'x-user: ann' -H 'x-legacy-token: t0k' http://127.0.0.1:10000/tx/headers
  # path, method and query rewritten: GET /tx/rewrite/orders/42?debug=1 -> PUT /tx/rewrite/v2/orders?id=42&source=gateway
  curl -s -H 'x-http-method-override: PUT' 'http://127.0.0.1:10000/tx/rewrite/orders/42?debug=1'
  # a JSON body patched (and the response too); not JSON -> 400; over 64 KiB -> 413
  curl -s -H 'content-type: application/json' -H 'x-user: ann' -d '{"order":{"id":"o-1"},"password":"x"}' 'http://127.0.0.1:10000/tx/json?page=2'
  curl -i -H 'content-type: application/json' -d 'not json' http://127.0.0.1:10000/tx/json
  # a body-less GET becomes a POST with a JSON body; the AWS-style envelope
  curl -s -H 'x-user: ann' 'http://127.0.0.1:10000/tx/create?q=shoes'
  curl -s 'http://127.0.0.1:10000/tx/envelope/items?id=1'
  # JSON -> XML for a SOAP backend
  curl -s -H 'content-type: application/json' -d '{"GetOrder":{"id":7}}' http://127.0.0.1:10000/tx/soap
  # an upstream 503 becomes the standard error envelope (502) with the request id
  curl -i -H 'x-echo-status: 503' -H 'x-echo-body: stack trace' http://127.0.0.1:10000/tx/errors

  # browser login: open http://localhost:10000/app/ in a browser, log in with any name and
  # password at the test identity provider, and see what the upstream received (x-user-id,
  # x-user-email, no Gatehouse cookie). A script without a session gets 401 and a login_url:
  curl -i http://localhost:10000/app/

  # loaded rules and policies, and metrics
  curl http://127.0.0.1:6070/rlconfig
  curl http://127.0.0.1:9192/config-status
  curl http://127.0.0.1:9292/config-status
  curl -s http://127.0.0.1:6070/metrics | grep ratelimit_service_rate_limit
  curl -s http://127.0.0.1:9192/metrics | grep gatehouse_extauth_decisions

Ctrl-C to stop.
TXT
wait -n "${pids[@]}"
