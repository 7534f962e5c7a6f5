#!/usr/bin/env bash
# Load benchmark of gatehouse-extauth. Prints each tool's summary; results go in BENCHMARKS.md.
#
#  1. Check over gRPC with h2load and a pre-encoded CheckRequest, for a no-op tonic
#     Authorization server (the ceiling), an API key policy, a JWT (RS256) policy and a
#     browser-login session in Redis (`oidc_login`, its cookie in the request; with the
#     in-process session cache, and without it): req/s,
#     latency at full load, at half of the measured maximum, and at 16 in flight.
#  2. Through Envoy with wrk: ext_authz (gRPC) to gatehouse-extauth against Envoy's own
#     jwt_authn filter on the same token, both answering with a direct_response (no upstream);
#     and, to see Envoy's own share, no authorization at all, ext_authz to the no-op server,
#     and ext_authz in HTTP mode (forward-auth) to gatehouse-extauth.
#  3. Requests the JWKS server (the IdP) saw during the measured runs: expected 0.
#  4. Idle RSS of gatehouse-extauth.
#
#   scripts/bench-extauth.sh                                 # defaults below
#   N=200000 C=16 M=16 WRK_C=32 WRK_D=10s ROUNDS=2 ENVOY_CONCURRENCY=1 scripts/bench-extauth.sh
#   PARTS=envoy ENVOY_CONCURRENCY=2 scripts/bench-extauth.sh  # only part 2 (PARTS=grpc: only 1)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=${N:-200000}
C=${C:-16}
M=${M:-16}
WRK_C=${WRK_C:-32}
WRK_D=${WRK_D:-10s}
ROUNDS=${ROUNDS:-2}
ENVOY_CONCURRENCY=${ENVOY_CONCURRENCY:-1}
LOG_LEVEL=${LOG_LEVEL:-info}
PARTS=${PARTS:-grpc,envoy}
source scripts/lib/bench.sh
require h2load wrk curl openssl python3 redis-server "$envoy"

cargo build -q --release -p gatehouse-extauth --bin gatehouse-extauth \
    --example encode_check --example mint_jwt --example mint_session --example noop_check_server
bin=target/release/gatehouse-extauth
examples=target/release/examples

# --- The identity provider: an RSA key, a token it signed, its JWKS over plain HTTP ----------
openssl genrsa -out "$work/key.pem" 2048 2>/dev/null
mkdir -p "$work/idp"
jwks_port=$(free_port)
issuer="http://127.0.0.1:$jwks_port"
audience=gatehouse-bench
"$examples/mint_jwt" "$work/key.pem" "$work/idp/jwks.json" "$issuer" "$audience" >"$work/token"
token=$(cat "$work/token")
# http.server logs one line per request on stderr.
python3 -u -m http.server "$jwks_port" --bind 127.0.0.1 --directory "$work/idp" >/dev/null 2>"$work/jwks.log" &
pids+=($!)
wait_port "$jwks_port"
jwks_fetches() { grep -c 'GET /jwks.json' "$work/jwks.log" || true; }
# Commands Redis processed so far (the session cache's reads of the ended-sessions log).
redis_commands() { redis-cli -p "$redis_port" INFO stats | awk -F: '/^total_commands_processed/ { print $2 + 0 }'; }

# --- Redis, with one browser-login session in it -------------------------------------------
redis_port=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no >/dev/null &
pids+=($!)
wait_port "$redis_port"
session=$("$examples/mint_session" "redis://127.0.0.1:$redis_port" gatehouse:session:)

# --- Policies -----------------------------------------------------------------------------
api_key=$(openssl rand -hex 24)
mkdir -p "$work/extauth"
openssl rand 32 >"$work/extauth/cookie.key"
cat >"$work/extauth/policies.yaml" <<YAML
policies:
  - name: keys
    identity:
      any_of:
        - name: bench-keys
          api_key:
            keys:
              - id: bench
                hash: $("$bin" hash-key "$api_key")
    response:
      headers:
        x-user-id: { from: sub }
  - name: jwt
    identity:
      any_of:
        - name: idp
          jwt:
            issuer: $issuer
            jwks_uri: $issuer/jwks.json
            audiences: [$audience]
            algorithms: [RS256]
    response:
      headers:
        x-user-id: { from: sub }
  # The IdP is never asked: the session needs no refresh.
  - name: app
    identity:
      any_of:
        - name: browser
          oidc_login:
            issuer: $issuer
            client_id: gatehouse-bench
            redirect_uri: http://localhost/app/callback
            cookie_secret_file: cookie.key
    response:
      headers:
        x-user-id: { from: sub }
        x-user-email: { from: claims.email }
  # The same sessions without the in-process cache: every Check reads Redis.
  - name: app-nocache
    identity:
      any_of:
        - name: browser
          oidc_login:
            issuer: $issuer
            client_id: gatehouse-bench
            redirect_uri: http://localhost/app/callback
            cookie_secret_file: cookie.key
            session: { cache_ttl: 0s }
    response:
      headers:
        x-user-id: { from: sub }
        x-user-email: { from: claims.email }
YAML
"$bin" check-config "$work/extauth/policies.yaml" >/dev/null

"$examples/encode_check" "$work/keys.bin" keys "x-api-key=$api_key" 2>/dev/null
"$examples/encode_check" "$work/jwt.bin" jwt "authorization=Bearer $token" 2>/dev/null
"$examples/encode_check" "$work/jwt-missing.bin" jwt 2>/dev/null
"$examples/encode_check" "$work/session.bin" app "cookie=theme=dark; __Host-gatehouse-session=$session" 2>/dev/null
"$examples/encode_check" "$work/session-nocache.bin" app-nocache "cookie=theme=dark; __Host-gatehouse-session=$session" 2>/dev/null

# start_extauth: gatehouse-extauth on free ports; sets extauth_pid, grpc_port, http_port.
start_extauth() {
    grpc_port=$(free_port)
    http_port=$(free_port)
    local fetched_before; fetched_before=$(jwks_fetches)
    env EXTAUTH_CONFIG="$work/extauth/policies.yaml" REDIS_URL="127.0.0.1:$redis_port" GRPC_HOST=127.0.0.1 GRPC_PORT="$grpc_port" \
        HOST=127.0.0.1 PORT="$http_port" LOG_LEVEL="$LOG_LEVEL" $(service_tracing) "$bin" >>"$work/extauth.log" 2>&1 &
    extauth_pid=$!
    pids+=("$extauth_pid")
    wait_port "$grpc_port"
    wait_port "$http_port"
    # The keys are fetched in the background when the policy loads.
    for _ in $(seq 1 50); do
        [ "$(jwks_fetches)" -gt "$fetched_before" ] && break
        sleep 0.1
    done
    sleep 1
}

# allowed POLICY: gatehouse_extauth_decisions_total{policy=POLICY, result="allow"}.
allowed() {
    curl -fs "http://127.0.0.1:$http_port/metrics" | awk -v p="policy=\"$1\"" \
        'index($1, "gatehouse_extauth_decisions_total{") == 1 && index($1, p) && index($1, "result=\"allow\"") { s += $2 } END { print s + 0 }'
}

# check_once REQUEST.bin: one Check with curl, the answer decoded.
check_once() {
    curl -s --http2-prior-knowledge -H 'content-type: application/grpc' -H 'te: trailers' \
        --data-binary "@$1" -o "$work/resp.bin" -D "$work/resp.headers" \
        "http://127.0.0.1:$grpc_port/envoy.service.auth.v3.Authorization/Check"
    echo "    $(basename "$1"): HTTP $(awk 'NR==1{print $2}' "$work/resp.headers"), $(grep -i '^grpc-status' "$work/resp.headers" | tr -d '\r'); $("$examples/encode_check" --decode "$work/resp.bin")"
}

h2=(h2load -c "$C" -m "$M" -t 1 -H 'content-type: application/grpc' -H 'te: trailers')
rows=()

# h2_bench NAME PORT REQUEST.bin POLICY: warm-up, throughput, latency at full and at half load.
# POLICY "-" (the no-op server) skips the count of allow decisions.
h2_bench() {
    local name=$1 port=$2 req=$3 policy=$4 pid=${pids[-1]}
    local url="http://127.0.0.1:$port/envoy.service.auth.v3.Authorization/Check"
    "${h2[@]}" -n 20000 -d "$req" "$url" >/dev/null
    local fetched_before allowed_before=0 ticks
    fetched_before=$(jwks_fetches)
    local redis_before; redis_before=$(redis_commands)
    [ "$policy" = - ] || allowed_before=$(allowed "$policy")
    ticks=$(cpu_ticks "$pid")
    echo "=== $name: h2load -n $N -c $C -m $M -t 1 -d $(basename "$req") -H 'content-type: application/grpc' -H 'te: trailers' $url"
    "${h2[@]}" -n "$N" -d "$req" "$url" >"$work/$name.h2"
    grep -E '^(finished in|requests:|status codes:)' "$work/$name.h2"
    local server_ms; server_ms=$(cpu_ms "$pid" "$ticks")
    local rps; rps=$(awk '/^finished in/ { gsub(",", "", $4); print $4 }' "$work/$name.h2")
    if [ "$policy" != - ]; then
        local counted=$(($(allowed "$policy") - allowed_before))
        echo "allow decisions counted by the service (/metrics): $counted of $N"
        [ "$counted" -eq "$N" ] || { echo "bench-extauth: $name: not every request was allowed" >&2; exit 1; }
    fi
    echo "server CPU: $server_ms ms for $N requests ($((server_ms * 1000 / N)) µs per request)"
    # Latency in separate runs: h2load's per-request log costs client CPU.
    "${h2[@]}" -n "$((N / 2))" -d "$req" --log-file="$work/$name-full.log" "$url" >/dev/null
    # Half load: each of the C clients paced at (max req/s / 2 / C) with --rps.
    local per_client; per_client=$(python3 -c "print(max(1, round($rps / 2 / $C)))")
    echo "--- half load: ${h2[*]} -n $((N / 2)) --rps $per_client -d $(basename "$req") --log-file=... URL"
    "${h2[@]}" -n "$((N / 2))" --rps "$per_client" -d "$req" --log-file="$work/$name-half.log" "$url" >"$work/$name-half.h2"
    local half_rps; half_rps=$(awk '/^finished in/ { gsub(",", "", $4); print $4 }' "$work/$name-half.h2")
    # And closed loop with one stream per connection (C in flight): no bursts, but no queue
    # either (h2load waits for each answer before it times the next request).
    h2load -c "$C" -m 1 -t 1 -H 'content-type: application/grpc' -H 'te: trailers' -n "$((N / 2))" \
        -d "$req" --log-file="$work/$name-m1.log" "$url" >"$work/$name-m1.h2"
    local m1_rps; m1_rps=$(awk '/^finished in/ { gsub(",", "", $4); print $4 }' "$work/$name-m1.h2")
    python3 - "$work/$name-full.log" "$work/$name-half.log" "$half_rps" "$work/$name-m1.log" "$m1_rps" "$C" <<'PY'
import sys
def pct(path):
    lat = sorted(int(line.split()[2]) for line in open(path) if line.strip())
    p = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))] / 1000
    return f"p50 {p(0.50):.2f}  p90 {p(0.90):.2f}  p99 {p(0.99):.2f}  max {lat[-1] / 1000:.2f}  ({len(lat)} requests)"
full, half, half_rps, m1, m1_rps, c = sys.argv[1:]
print(f"latency ms, full load: {pct(full)}")
print(f"latency ms, half load --rps ({float(half_rps):.0f} req/s): {pct(half)}")
print(f"latency ms, -m 1 ({c} in flight, {float(m1_rps):.0f} req/s): {pct(m1)}")
PY
    echo "JWKS requests during the measured runs: $(($(jwks_fetches) - fetched_before))"
    echo "Redis commands during the measured runs: $(($(redis_commands) - redis_before - 1))"
    echo "RSS after the runs: $(rss "$pid")"
}

# --- 1. Direct gRPC ---------------------------------------------------------------------------
if [[ $PARTS == *grpc* ]]; then
echo "##### 1. Check over gRPC (h2load, $((C * M)) in flight)"
port=$(free_port)
"$examples/noop_check_server" "127.0.0.1:$port" &
pids+=($!)
wait_port "$port"
echo "--- ceiling (no-op tonic Authorization server): RSS idle $(rss "${pids[-1]}")"
h2_bench ceiling "$port" "$work/keys.bin" -
kill "${pids[-1]}"

start_extauth
echo "--- gatehouse-extauth: RSS idle (policies loaded, keys fetched, no request yet): $(rss "$extauth_pid")"
check_once "$work/keys.bin"
check_once "$work/jwt.bin"
check_once "$work/jwt-missing.bin"
check_once "$work/session.bin"
h2_bench api-key "$grpc_port" "$work/keys.bin" keys
h2_bench jwt "$grpc_port" "$work/jwt.bin" jwt
h2_bench session "$grpc_port" "$work/session.bin" app
h2_bench session-nocache "$grpc_port" "$work/session-nocache.bin" app-nocache
kill "$extauth_pid"
fi
[[ $PARTS == *envoy* ]] || exit 0

# --- 2. Through Envoy ------------------------------------------------------------------------
echo
echo "##### 2. Through Envoy (--concurrency $ENVOY_CONCURRENCY; wrk -t1 -c$WRK_C -d$WRK_D)"
start_extauth
echo "--- gatehouse-extauth (fresh): RSS idle $(rss "$extauth_pid")"
noop_port=$(free_port)
"$examples/noop_check_server" "127.0.0.1:$noop_port" &
noop_pid=$!
pids+=("$noop_pid")
wait_port "$noop_port"

start_envoy extauth-jwt envoy/bench/extauth-jwt.yaml "$ENVOY_CONCURRENCY" EXTAUTH_PORT="$grpc_port"
extauth_envoy_pid=$envoy_pid extauth_envoy_port=$envoy_port extauth_envoy_admin=$envoy_admin
start_envoy jwt-authn envoy/bench/jwt-authn.yaml "$ENVOY_CONCURRENCY" JWKS_PORT="$jwks_port" JWT_ISSUER="$issuer" JWT_AUDIENCE="$audience"
authn_envoy_pid=$envoy_pid authn_envoy_port=$envoy_port authn_envoy_admin=$envoy_admin
start_envoy extauth-noop envoy/bench/extauth-jwt.yaml "$ENVOY_CONCURRENCY" EXTAUTH_PORT="$noop_port"
noop_envoy_pid=$envoy_pid noop_envoy_port=$envoy_port
start_envoy extauth-http envoy/bench/extauth-http-jwt.yaml "$ENVOY_CONCURRENCY" EXTAUTH_HTTP_PORT="$http_port"
http_envoy_pid=$envoy_pid http_envoy_port=$envoy_port
sleep 1

status() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
echo "--- sanity (HTTP status: with the token / without / with a tampered signature):"
for target in "ext_authz $extauth_envoy_port /" "ext_authz-http $http_envoy_port /" "jwt_authn $authn_envoy_port /" \
    "jwt_authn-nocache $authn_envoy_port /nocache/"; do
    read -r label port path <<<"$target"
    echo "    $label: $(status -H "authorization: Bearer $token" "http://127.0.0.1:$port$path")" \
        "/ $(status "http://127.0.0.1:$port$path")" \
        "/ $(status -H "authorization: Bearer ${token%??????}AAAAAA" "http://127.0.0.1:$port$path")"
done

# wrk_run NAME ENVOY_PID AUTH_PID PORT PATH [wrk args]: warm-up, then the measured run. CPU
# time is counted for Envoy and for the authorization server AUTH_PID.
wrk_run() {
    local name=$1 envoy_pid=$2 auth_pid=$3 port=$4 path=$5; shift 5
    local url="http://127.0.0.1:$port$path"
    wrk -t1 -c"$WRK_C" -d2s "$@" "$url" >/dev/null
    local e_ticks x_ticks fetched_before
    e_ticks=$(cpu_ticks "$envoy_pid")
    x_ticks=$(cpu_ticks "$auth_pid")
    fetched_before=$(jwks_fetches)
    wrk -t1 -c"$WRK_C" -d"$WRK_D" --latency "$@" "$url" >"$work/$name.wrk"
    local e_ms x_ms; e_ms=$(cpu_ms "$envoy_pid" "$e_ticks"); x_ms=$(cpu_ms "$auth_pid" "$x_ticks")
    local rps requests non2xx fetched
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$work/$name.wrk")
    requests=$(awk '/requests in/ { print $1 }' "$work/$name.wrk")
    non2xx=$(awk '/Non-2xx/ { print $NF }' "$work/$name.wrk")
    fetched=$(($(jwks_fetches) - fetched_before))
    local lat; lat=$(awk '$1 ~ /^(50|90|99)%$/ { printf "p%s %s  ", substr($1, 1, length($1) - 1), $2 }' "$work/$name.wrk")
    printf '%-17s %9s req/s  %s non-2xx %s  CPU/request: envoy %s µs, auth server %s µs  JWKS requests %s\n' \
        "$name" "$rps" "$lat" "${non2xx:-0}" "$((e_ms * 1000 / requests))" "$((x_ms * 1000 / requests))" "$fetched"
    [ -z "$non2xx" ] || { echo "bench-extauth: $name: non-2xx responses" >&2; cat "$work/$name.wrk" >&2; exit 1; }
    echo "$name $rps" >>"$work/wrk.results"
}

auth=(-H "authorization: Bearer $token")
echo "--- wrk -t1 -c$WRK_C -d$WRK_D --latency [-H 'authorization: Bearer TOKEN'] http://127.0.0.1:PORT/PATH, $ROUNDS rounds"
for round in $(seq 1 "$ROUNDS"); do
    echo "round $round:"
    wrk_run envoy-open "$extauth_envoy_pid" "$extauth_pid" "$extauth_envoy_port" /open
    wrk_run ext_authz-noop "$noop_envoy_pid" "$noop_pid" "$noop_envoy_port" / "${auth[@]}"
    wrk_run ext_authz "$extauth_envoy_pid" "$extauth_pid" "$extauth_envoy_port" / "${auth[@]}"
    wrk_run ext_authz-http "$http_envoy_pid" "$extauth_pid" "$http_envoy_port" / "${auth[@]}"
    wrk_run jwt_authn "$authn_envoy_pid" "$extauth_pid" "$authn_envoy_port" / "${auth[@]}"
    wrk_run jwt_authn-nocache "$authn_envoy_pid" "$extauth_pid" "$authn_envoy_port" /nocache/ "${auth[@]}"
done
echo "Envoy stats: ext_authz (gRPC) $(curl -s "http://127.0.0.1:$extauth_envoy_admin/stats?filter=ext_authz\.(ok|denied|error)$" | tr '\n' ' ')"
echo "             jwt_authn $(curl -s "http://127.0.0.1:$authn_envoy_admin/stats?filter=jwt_authn\.(allowed|denied)$" | tr '\n' ' ')"
python3 - "$work/wrk.results" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name, rps = line.split()
    runs.setdefault(name, []).append(float(rps))
med = {k: statistics.median(v) for k, v in runs.items()}
print("median req/s: " + ", ".join(f"{k} {v:,.0f}" for k, v in med.items()))
for name in ("ext_authz-noop", "ext_authz", "ext_authz-http"):
    print(f"{name} / jwt_authn (cached): {med[name] / med['jwt_authn']:.0%};"
          f" / jwt_authn (no cache): {med[name] / med['jwt_authn-nocache']:.0%}")
print(f"ext_authz / ext_authz-noop: {med['ext_authz'] / med['ext_authz-noop']:.0%}")
PY

echo
echo "##### 3. JWKS server: $(jwks_fetches) requests in all (expected: one per extauth start, one or two per Envoy start)"
cat "$work/jwks.log"
echo "##### 4. gatehouse-extauth RSS now: $(rss "$extauth_pid")"
