#!/usr/bin/env bash
# Load benchmark of gatehouse-transform through Envoy. Prints each run; results go in
# BENCHMARKS.md.
#
# One upstream (envoy/bench/transform-upstream.yaml: 200 "ok" after reading the request) and
# three gateway Envoys in front of it, all running at once:
#   transform  ext_proc to gatehouse-transform (envoy/bench/transform.yaml)
#   lua        Envoy's in-process Lua filter (envoy/bench/transform-lua.yaml)
#   none       the router only: the ceiling (envoy/bench/transform-none.yaml)
#
#  1. Correctness, once through each Envoy: the upstream echoes what it received (x-bench,
#     the body) for requests that carry x-echo.
#  2. Header change (x-bench: gatehouse on the request, one ext_proc message per request):
#     wrk GET through none, lua and transform, ROUNDS rounds; req/s, latency, CPU per request,
#     and transform ÷ lua. Also through transform on /noop, a transformation without rules
#     (the ext_proc round trip alone, no mutation).
#  3. JSON patch of a 4 KiB POST body (/patched set, /drop removed): maximum req/s through
#     transform (and none, for reference), then latency at about half of that maximum:
#     a. wrk, WRK_C connections, each waiting a random (exponential) time between its
#        response and its next request, the mean chosen so the total is about half the
#        maximum (wrk2 -R instead, if wrk2 is installed); the same pacing through none;
#     b. wrk closed loop with the number of connections whose throughput is nearest half;
#     c. h2load --h1 --rps, as scripts/bench-extauth.sh measured half load (through none too).
#
#   scripts/bench-transform.sh                                     # defaults below
#   WRK_C=32 WRK_D=10s ROUNDS=2 ENVOY_CONCURRENCY=1 BODY_BYTES=4096 scripts/bench-transform.sh
#   PARTS=headers scripts/bench-transform.sh                       # only part 2 (PARTS=json: only 3)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WRK_C=${WRK_C:-32}
WRK_D=${WRK_D:-10s}
ROUNDS=${ROUNDS:-2}
ENVOY_CONCURRENCY=${ENVOY_CONCURRENCY:-1}
UPSTREAM_CONCURRENCY=${UPSTREAM_CONCURRENCY:-1}
BODY_BYTES=${BODY_BYTES:-4096}
LOG_LEVEL=${LOG_LEVEL:-info}
PARTS=${PARTS:-headers,json}
source scripts/lib/bench.sh
require wrk h2load curl python3 "$envoy"
wrk2=$(command -v wrk2 || true)

cargo build -q --release -p gatehouse-transform
bin=target/release/gatehouse-transform

# --- The transformations, the request body, wrk's scripts ------------------------------------
cat >"$work/transformations.yaml" <<'YAML'
transformations:
  # One request rule, no response rules: one ext_proc message per request.
  - name: headers
    request:
      - headers:
          set: { x-bench: gatehouse }
  # No rules: the service answers the headers message with CONTINUE and nothing else.
  - name: noop
  # The request body is buffered by Envoy, sent, patched and sent back (two messages).
  - name: json-patch
    request:
      - match: { method: { equals: POST } }
        body:
          - json:
              - set: { path: /patched, value: true }
              - remove: /drop
YAML
"$bin" check-config "$work/transformations.yaml"

# A JSON object of exactly BODY_BYTES bytes with "patched": false and a "drop" key.
python3 - "$work/body.json" "$BODY_BYTES" <<'PY'
import json, sys
path, size = sys.argv[1], int(sys.argv[2])
doc = {"id": 4711, "patched": False, "drop": "internal-only", "customer": {"name": "Ada Lovelace", "tier": "gold"},
       "items": [{"sku": f"SKU-{i:05d}", "qty": i % 7 + 1, "price": round(9.99 + i, 2), "tags": ["bench", "json"]}
                 for i in range(24)], "note": ""}
body = json.dumps(doc, separators=(",", ":"))
while len(body) > size and doc["items"]:
    doc["items"].pop()
    body = json.dumps(doc, separators=(",", ":"))
doc["note"] = "x" * (size - len(body))
body = json.dumps(doc, separators=(",", ":"))
assert len(body) == size, len(body)
open(path, "w").write(body)
PY
post_lua() { # post_lua FILE [MEAN_DELAY_MS]: wrk script POSTing body.json; with a delay, paced.
    cat >"$1" <<LUA
local f = assert(io.open("$work/body.json", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
LUA
    if [ -n "${2:-}" ]; then
        cat >>"$1" <<LUA
-- Exponential think time between a response and the connection's next request (mean $2 ms),
-- so that the connections' requests arrive spread out, not in lockstep.
local mean = $2
math.randomseed(os.time())
function delay() return math.floor(-math.log(1 - math.random()) * mean + 0.5) end
LUA
    fi
}
post_lua "$work/post.lua"

# wrk_parse FILE: "req/s requests p50_ms p90_ms p99_ms non2xx socket_errors" (wrk or wrk2 output).
wrk_parse() {
    python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
unit = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
pct = {}
for m in re.finditer(r"^\s*(50|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M):
    pct.setdefault(m[1], float(m[2]) * unit[m[3]])
rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)[1]
requests = re.search(r"^\s*(\d+) requests in", text, re.M)[1]
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
errors = re.search(r"Socket errors: (.*)", text)
print(rps, requests, *(f"{pct.get(p, float('nan')):.3f}" for p in ("50", "90", "99")),
      non2xx[1] if non2xx else 0, (errors[1] if errors else "none").replace(" ", ""))
PY
}

unset upstream_port
start_envoy upstream envoy/bench/transform-upstream.yaml "$UPSTREAM_CONCURRENCY"
upstream_pid=$envoy_pid upstream_port=$envoy_port

grpc_port=$(free_port)
http_port=$(free_port)
env TRANSFORM_CONFIG="$work/transformations.yaml" GRPC_HOST=127.0.0.1 GRPC_PORT="$grpc_port" \
    HOST=127.0.0.1 PORT="$http_port" LOG_LEVEL="$LOG_LEVEL" $(service_tracing) "$bin" >>"$work/transform.log" 2>&1 &
transform_pid=$!
pids+=("$transform_pid")
wait_port "$grpc_port"
wait_port "$http_port"
sleep 0.5
echo "gatehouse-transform: RSS idle $(rss "$transform_pid")"

start_envoy transform envoy/bench/transform.yaml "$ENVOY_CONCURRENCY" TRANSFORM_PORT="$grpc_port"
tx_pid=$envoy_pid tx_port=$envoy_port tx_admin=$envoy_admin
start_envoy lua envoy/bench/transform-lua.yaml "$ENVOY_CONCURRENCY"
lua_pid=$envoy_pid lua_port=$envoy_port
start_envoy none envoy/bench/transform-none.yaml "$ENVOY_CONCURRENCY"
none_pid=$envoy_pid none_port=$envoy_port
sleep 1

# exchanges TRANSFORMATION RESULT: gatehouse_transform_exchanges_total{transformation=…, result=…}.
exchanges() {
    curl -fs "http://127.0.0.1:$http_port/metrics" | awk -v t="transformation=\"$1\"" -v r="result=\"$2\"" \
        'index($1, "gatehouse_transform_exchanges_total{") == 1 && index($1, t) && index($1, r) { s += $2 } END { print s + 0 }'
}
ext_proc_stat() { # ext_proc_stat NAME: http.gateway.ext_proc.NAME of the transform Envoy.
    curl -fs "http://127.0.0.1:$tx_admin/stats?filter=^http\.gateway\.ext_proc\.$1$" | awk '{print $2 + 0}'
}

# --- 1. Correctness ---------------------------------------------------------------------------
echo
echo "##### 1. Correctness (the upstream echoes x-bench and the body it received)"
echo_get() { curl -fsS -H 'x-echo: 1' "http://127.0.0.1:$1$2" | head -1; }
for target in "none $none_port / x-bench:" "lua $lua_port / x-bench: gatehouse" \
    "transform $tx_port / x-bench: gatehouse" "transform $tx_port /noop x-bench:"; do
    read -r label port path expected <<<"$target"
    seen=$(echo_get "$port" "$path")
    echo "    GET $path via $label: upstream saw '$seen'"
    [ "${seen% }" = "$expected" ] || fail "$label $path: expected '$expected'"
done
for target in "none $none_port" "transform $tx_port"; do
    read -r label port <<<"$target"
    curl -fsS -H 'x-echo: 1' -H 'content-type: application/json' --data-binary "@$work/body.json" \
        "http://127.0.0.1:$port/json" | tail -n +2 >"$work/echo-$label.json"
    python3 - "$work/body.json" "$work/echo-$label.json" "$label" <<'PY' || fail "JSON patch check failed"
import json, sys
sent, seen = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
expected = dict(sent)
if sys.argv[3] == "transform":
    expected["patched"] = True
    del expected["drop"]
ok = seen == expected
print(f"    POST /json ({len(open(sys.argv[1]).read())} bytes) via {sys.argv[3]}: upstream got "
      f"{len(open(sys.argv[2]).read())} bytes, patched={seen.get('patched')}, drop {'present' if 'drop' in seen else 'removed'}, "
      f"everything else identical: {ok}")
sys.exit(0 if ok else 1)
PY
done
echo "    transform Envoy: ext_proc streams_started $(ext_proc_stat streams_started)," \
    "stream_msgs_sent $(ext_proc_stat stream_msgs_sent); service: headers $(exchanges headers transformed)," \
    "json-patch $(exchanges json-patch transformed) exchanges transformed"

# wrk_run NAME ROUND ENVOY_PID PORT PATH TRANSFORMATION [wrk args]: warm-up, then the measured
# run; CPU per request of the gateway Envoy, gatehouse-transform and the upstream Envoy.
# TRANSFORMATION (or -): the service must have counted at least one exchange per request.
wrk_run() {
    local name=$1 round=$2 pid=$3 port=$4 path=$5 tname=$6; shift 6
    local url="http://127.0.0.1:$port$path"
    wrk -t1 -c"$WRK_C" -d2s "$@" "$url" >/dev/null
    wrk_measured "$name" "$round" "$pid" "$tname" wrk -t1 -c"$WRK_C" -d"$WRK_D" --latency "$@" "$url"
}
# wrk_measured NAME ROUND ENVOY_PID TRANSFORMATION COMMAND...: runs COMMAND (wrk or wrk2),
# prints one line and appends "NAME ROUND req/s p50 p90 p99 envoy_µs transform_µs upstream_µs"
# to $work/results. Sets last_rps.
wrk_measured() {
    local name=$1 round=$2 pid=$3 tname=$4; shift 4
    local e_ticks t_ticks u_ticks x_before=0 started_before
    [ "$tname" = - ] || x_before=$(exchanges "$tname" transformed)
    started_before=$(ext_proc_stat streams_started)
    e_ticks=$(cpu_ticks "$pid"); t_ticks=$(cpu_ticks "$transform_pid"); u_ticks=$(cpu_ticks "$upstream_pid")
    "$@" >"$work/$name.$round.wrk"
    local e_ms t_ms u_ms
    e_ms=$(cpu_ms "$pid" "$e_ticks"); t_ms=$(cpu_ms "$transform_pid" "$t_ticks"); u_ms=$(cpu_ms "$upstream_pid" "$u_ticks")
    local rps requests p50 p90 p99 non2xx errors
    read -r rps requests p50 p90 p99 non2xx errors < <(wrk_parse "$work/$name.$round.wrk")
    local streams=$(($(ext_proc_stat streams_started) - started_before)) counted=-
    [ "$tname" = - ] || counted=$(($(exchanges "$tname" transformed) - x_before))
    printf '%-26s %9s req/s  p50 %s  p90 %s  p99 %s ms  non-2xx %s  socket errors %s  CPU/request: envoy %s µs, transform %s µs, upstream %s µs  ext_proc streams %s, exchanges %s\n' \
        "$name" "$rps" "$p50" "$p90" "$p99" "$non2xx" "$errors" "$((e_ms * 1000 / requests))" \
        "$((t_ms * 1000 / requests))" "$((u_ms * 1000 / requests))" "$streams" "$counted"
    [ "$non2xx" -eq 0 ] || { cat "$work/$name.$round.wrk" >&2; fail "$name: non-2xx responses"; }
    if [ "$tname" != - ] && [ "$counted" -lt "$requests" ]; then
        fail "$name: $requests requests completed but the service counted $counted exchanges"
    fi
    echo "$name $round $rps $p50 $p90 $p99 $((e_ms * 1000 / requests)) $((t_ms * 1000 / requests)) $((u_ms * 1000 / requests))" \
        >>"$work/results"
    last_rps=$rps
}
touch "$work/results" "$work/notes"

# --- 2. Header change -------------------------------------------------------------------------
if [[ $PARTS == *headers* ]]; then
echo
echo "##### 2. x-bench: gatehouse on GET / (--concurrency $ENVOY_CONCURRENCY; wrk -t1 -c$WRK_C -d$WRK_D --latency), $ROUNDS rounds"
for round in $(seq 1 "$ROUNDS"); do
    echo "round $round:"
    wrk_run headers-none "$round" "$none_pid" "$none_port" / -
    wrk_run headers-lua "$round" "$lua_pid" "$lua_port" / -
    wrk_run headers-noop "$round" "$tx_pid" "$tx_port" /noop noop
    wrk_run headers-transform "$round" "$tx_pid" "$tx_port" / headers
done
fi

# --- 3. JSON patch ----------------------------------------------------------------------------
if [[ $PARTS == *json* ]]; then
echo
echo "##### 3. JSON patch of a $BODY_BYTES-byte POST /json (wrk -t1 -c$WRK_C -d$WRK_D --latency -s post.lua), $ROUNDS rounds"
for round in $(seq 1 "$ROUNDS"); do
    echo "round $round:"
    wrk_run json-none "$round" "$none_pid" "$none_port" /json - -s "$work/post.lua"
    wrk_run json-transform "$round" "$tx_pid" "$tx_port" /json json-patch -s "$work/post.lua"
done
json_max=$(awk '$1 == "json-transform" { print $3 }' "$work/results" | sort -n |
    awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
half=$(python3 -c "print(round($json_max / 2))")
echo "json-transform: median maximum $json_max req/s; half load = $half req/s"
echo "json_max $json_max $half" >>"$work/notes"

url=http://127.0.0.1:$tx_port/json
# a. Paced connections (or wrk2 -R).
if [ -n "$wrk2" ]; then
    echo "--- a. half load: $wrk2 -t1 -c$WRK_C -d$WRK_D -R $half --latency -s post.lua URL"
    for target in "json-half-transform $tx_pid $tx_port json-patch" "json-half-none $none_pid $none_port -"; do
        read -r name pid port tname <<<"$target"
        "$wrk2" -t1 -c"$WRK_C" -d2s -R "$half" -s "$work/post.lua" "http://127.0.0.1:$port/json" >/dev/null
        wrk_measured "$name" 1 "$pid" "$tname" "$wrk2" -t1 -c"$WRK_C" -d"$WRK_D" -R "$half" --latency \
            -s "$work/post.lua" "http://127.0.0.1:$port/json"
    done
    echo "half_method wrk2 -R $half" >>"$work/notes"
else
    # Each connection waits a think time (exponential, mean d) after each response, so
    # throughput ≈ C / (d + latency). d from the target, then corrected once from a 3 s run.
    mean=$(python3 -c "print(round($WRK_C * 1000 / $half, 2))")
    post_lua "$work/paced.lua" "$mean"
    wrk -t1 -c"$WRK_C" -d3s -s "$work/paced.lua" "$url" >"$work/calibrate.wrk"
    got=$(wrk_parse "$work/calibrate.wrk" | awk '{print $1}')
    mean=$(python3 -c "print(max(0.1, round($mean - ($WRK_C * 1000 / $got - $WRK_C * 1000 / $half), 2)))")
    post_lua "$work/paced.lua" "$mean"
    echo "--- a. half load, paced: wrk -t1 -c$WRK_C -d$WRK_D --latency -s paced.lua URL (exponential think time, mean $mean ms; calibration run: $got req/s)"
    wrk_measured json-half-transform 1 "$tx_pid" json-patch wrk -t1 -c"$WRK_C" -d"$WRK_D" --latency -s "$work/paced.lua" "$url"
    wrk_measured json-half-none 1 "$none_pid" - wrk -t1 -c"$WRK_C" -d"$WRK_D" --latency -s "$work/paced.lua" \
        "http://127.0.0.1:$none_port/json"
    echo "half_method paced $mean" >>"$work/notes"
fi

# b. Closed loop with fewer connections: the count whose throughput is nearest half.
best_c=1 best_gap=
for c in 1 2 4 8 16; do
    [ "$c" -lt "$WRK_C" ] || break
    wrk -t1 -c"$c" -d2s -s "$work/post.lua" "$url" >"$work/probe-$c.wrk"
    got=$(wrk_parse "$work/probe-$c.wrk" | awk '{print $1}')
    gap=$(python3 -c "print(abs($got - $half))")
    echo "    probe: -c$c → $got req/s"
    if [ -z "$best_gap" ] || python3 -c "import sys; sys.exit(0 if $gap < $best_gap else 1)"; then
        best_c=$c best_gap=$gap
    fi
done
echo "--- b. half load, fewer connections: wrk -t1 -c$best_c -d$WRK_D --latency -s post.lua URL"
wrk_measured json-fewer-transform 1 "$tx_pid" json-patch wrk -t1 -c"$best_c" -d"$WRK_D" --latency -s "$work/post.lua" "$url"
echo "fewer_c $best_c" >>"$work/notes"

# c. h2load --rps, as in bench-extauth.sh: each of WRK_C clients paced at half / WRK_C.
per_client=$(python3 -c "print(max(1, round($half / $WRK_C)))")
h2=(h2load --h1 -c "$WRK_C" -t 1 --rps "$per_client" -D "${WRK_D%s}" -d "$work/body.json" -H 'content-type: application/json')
echo "--- c. half load, h2load: h2load --h1 -c $WRK_C -t 1 --rps $per_client -D ${WRK_D%s} -d body.json -H 'content-type: application/json' --log-file=... URL"
for target in "h2load-transform $tx_port" "h2load-none $none_port"; do
    read -r name port <<<"$target"
    "${h2[@]}" --log-file="$work/$name.log" "http://127.0.0.1:$port/json" >"$work/$name.h2"
    python3 - "$work/$name.log" "$work/$name.h2" "$work/notes" "$name" <<'PY'
import re, sys
log, out, notes, name = sys.argv[1:]
lines = [line.split() for line in open(log) if line.strip()]
lat = sorted(int(f[2]) for f in lines if f[1] == "200")
bad = sum(1 for f in lines if f[1] != "200")
p = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))] / 1000
rps = float(re.search(r"finished in [^,]+, ([\d.]+) req/s", open(out).read())[1])
print(f"{name:<26} {rps:9.2f} req/s  p50 {p(0.5):.3f}  p90 {p(0.9):.3f}  p99 {p(0.99):.3f} ms  max {lat[-1] / 1000:.2f} ms"
      f"  ({len(lat)} requests, {bad} not 200)")
open(notes, "a").write(f"{name} {rps:.0f} {p(0.5):.3f} {p(0.9):.3f} {p(0.99):.3f} {bad}\n")
if bad:
    sys.exit(f"bench-transform: {name}: responses other than 200")
PY
done
fi

echo
echo "Envoy ext_proc stats (transform Envoy): $(curl -s "http://127.0.0.1:$tx_admin/stats?filter=^http\.gateway\.ext_proc\." | tr '\n' ' ')"
echo "gatehouse-transform: exchanges headers $(exchanges headers transformed), noop $(exchanges noop transformed), json-patch $(exchanges json-patch transformed)," \
    "rejected $(($(exchanges headers rejected) + $(exchanges json-patch rejected))); RSS now $(rss "$transform_pid")"

# --- Summary ----------------------------------------------------------------------------------
echo
echo "##### Summary (Envoy --concurrency $ENVOY_CONCURRENCY, wrk -t1 -c$WRK_C -d$WRK_D; medians over $ROUNDS rounds)"
python3 - "$work/results" "$work/notes" "$WRK_C" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, _round, rps, p50, p90, p99, e, t, u = line.split()
    rows.setdefault(name, []).append((float(rps), float(p50), float(p99), int(e), int(t), int(u)))
notes = {l.split()[0]: l.split()[1:] for l in open(sys.argv[2])}
med = lambda name, i: statistics.median(r[i] for r in rows[name])
def row(label, name):
    if name not in rows:
        return
    r = rows[name]
    print(f"| {label} | {med(name, 0):,.0f} ({' / '.join(f'{x[0]:,.0f}' for x in r)}) | {med(name, 1):.2f} ms | "
          f"{' / '.join(f'{x[2]:.2f}' for x in r)} ms | {med(name, 3):.0f} µs | {med(name, 4):.0f} µs | {med(name, 5):.0f} µs |")
print("| path | req/s median (per round) | p50 | p99 (per round) | gateway Envoy CPU/req | transform CPU/req | upstream CPU/req |")
print("|---|---|---|---|---|---|---|")
row("GET, no filter (ceiling)", "headers-none")
row("GET, Lua sets x-bench", "headers-lua")
row("GET, ext_proc → gatehouse-transform, no rule (noop)", "headers-noop")
row("GET, ext_proc → gatehouse-transform sets x-bench", "headers-transform")
row(f"POST 4 KiB JSON, no filter", "json-none")
row(f"POST 4 KiB JSON, ext_proc → gatehouse-transform JSON patch", "json-transform")
if "headers-transform" in rows:
    ratio = med("headers-transform", 0) / med("headers-lua", 0)
    print(f"\nheaders: transform ÷ Lua = {ratio:.0%} (target ≥ 60%: {'met' if ratio >= 0.6 else 'NOT met'});"
          f" transform ÷ no filter = {med('headers-transform', 0) / med('headers-none', 0):.0%};"
          f" Lua ÷ no filter = {med('headers-lua', 0) / med('headers-none', 0):.0%};"
          f" ext_proc noop ÷ Lua = {med('headers-noop', 0) / med('headers-lua', 0):.0%}")
if "json_max" in notes:
    json_max, half = notes["json_max"]
    print(f"\nJSON patch: maximum {float(json_max):,.0f} req/s; half load target {int(half):,} req/s")
    method = notes["half_method"]
    label = f"wrk2 -R {method[1]}" if method[0] == "wrk2" else f"wrk -c{sys.argv[3]}, paced (exponential think time, mean {method[1]} ms)"
    for name, what in (("json-half-transform", "transform"), ("json-half-none", "no filter, same pacing")):
        r = rows[name][0]
        print(f"  a. {label}, {what}: {r[0]:,.0f} req/s, p50 {r[1]:.2f} ms, p99 {r[2]:.2f} ms")
    r = rows["json-fewer-transform"][0]
    print(f"  b. wrk -c{notes['fewer_c'][0]}, closed loop: {r[0]:,.0f} req/s, p50 {r[1]:.2f} ms, p99 {r[2]:.2f} ms")
    for name, what in (("h2load-transform", "transform"), ("h2load-none", "no filter, same rate")):
        rps, p50, p90, p99, _bad = notes[name]
        print(f"  c. h2load --h1 -c{sys.argv[3]} --rps, {what}: {float(rps):,.0f} req/s, p50 {float(p50):.2f} ms, p99 {float(p99):.2f} ms")
    p99a = rows["json-half-transform"][0][2]
    print(f"  target p99 < 3 ms at half load (a): {'met' if p99a < 3 else 'NOT met'} ({p99a:.2f} ms)")
PY
