#!/usr/bin/env bash
# What tracing costs on every benchmark path: each service's load benchmark with tracing off,
# then on at 100% sampling (OTEL_TRACES_SAMPLER=always_on, exported over OTLP/gRPC to
# tests/examples/otlp_sink.rs, a collector that only counts), alternating ROUNDS times so that
# drift in the machine's speed hits both. Results go in BENCHMARKS.md.
#
#   scripts/bench-tracing.sh                       # all three services
#   SERVICES=extauth,transform ROUNDS=2 scripts/bench-tracing.sh
#
# ratelimit: scripts/bench-ratelimit.sh with TRACING=1 (ShouldRateLimit over gRPC with h2load,
#            and through Envoy with wrk).
# extauth:   scripts/bench-extauth.sh, Check over gRPC (h2load) and through Envoy (wrk).
# transform: scripts/bench-transform.sh PARTS=headers, ext_proc through Envoy (wrk).
# Each prints its own detail; the summary at the end is the median req/s per row, off and on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROUNDS=${ROUNDS:-2}
SERVICES=${SERVICES:-ratelimit,extauth,transform}
source scripts/lib/bench.sh

cargo build -q --release -p gatehouse-testkit --example otlp_sink
sink_port=$(free_port)
target/release/examples/otlp_sink "127.0.0.1:$sink_port" >"$work/sink.log" &
pids+=($!)
wait_port "$sink_port"

if [[ $SERVICES == *ratelimit* ]]; then
    echo "##### gatehouse-ratelimit"
    TRACING=1 scripts/bench-ratelimit.sh | tee "$work/ratelimit.out"
fi

# run SERVICE MODE ROUND SCRIPT [VAR=VALUE...]: one run of SCRIPT, tracing MODE (off or on).
run() {
    local service=$1 mode=$2 round=$3 script=$4; shift 4
    local trace_to=
    [ "$mode" = off ] || trace_to="http://127.0.0.1:$sink_port"
    echo "##### gatehouse-$service, tracing $mode, round $round"
    env ROUNDS=1 TRACE_TO="$trace_to" "$@" "$script" >"$work/$service-$mode-$round.out"
    # The rows the summary reads, as the scripts print them.
    grep -E '^(=== |finished in|server CPU|ext_authz |ext_authz-http |headers-(transform|noop) )' \
        "$work/$service-$mode-$round.out"
}
for round in $(seq 1 "$ROUNDS"); do
    for mode in off on; do
        [[ $SERVICES != *extauth* ]] || run extauth "$mode" "$round" scripts/bench-extauth.sh
        [[ $SERVICES != *transform* ]] || run transform "$mode" "$round" scripts/bench-transform.sh PARTS=headers
    done
done
sleep 2
echo "spans the sink received: $(tail -n 1 "$work/sink.log")"

python3 - "$work" <<'PY'
import glob, os, re, statistics, sys
rows = {}  # (service, row, mode) -> [(req/s, CPU µs per request of the service)]
def add(service, row, mode, rps, cpu):
    rows.setdefault((service, row, mode), []).append((float(rps), cpu))
for path in glob.glob(os.path.join(sys.argv[1], "*.out")):
    name = os.path.basename(path)[:-4]
    if name == "ratelimit":
        # "--- memory-tracing-on-1: ..." then "finished in ..., R req/s"
        row = None
        for line in open(path):
            m = re.match(r"envoy-tracing-(off|on)-\d+ ([\d.]+) req/s.*ratelimit (\d+) µs", line)
            if m:
                add("ratelimit", "ShouldRateLimit (through Envoy)", m[1], m[2], int(m[3]))
            m = re.match(r"=== (memory-[a-z-]+?)-\d+:", line)
            if m: row = m[1]
            m = re.match(r"finished in .*?, ([\d.]+) req/s", line)
            if m and row:
                mode = "on" if row.endswith("tracing-on") else "off" if row.endswith("tracing-off") else None
                if mode: add("ratelimit", "ShouldRateLimit (gRPC, memory)", mode, m[1], None)
                row = None
        continue
    service, mode, _ = name.split("-")
    grpc_row, text = None, open(path).read().splitlines()
    for i, line in enumerate(text):
        m = re.match(r"=== ([a-z-]+): h2load", line)
        if m: grpc_row = m[1]
        m = re.match(r"finished in .*?, ([\d.]+) req/s", line)
        if m and grpc_row and grpc_row != "ceiling":
            cpu = next((int(c[1]) for c in (re.search(r"\((\d+) µs per request\)", l) for l in text[i:i + 6]) if c), None)
            add(service, f"Check {grpc_row} (gRPC)", mode, m[1], cpu)
            grpc_row = None
        m = re.match(r"(ext_authz|ext_authz-http|headers-transform|headers-noop)\s+([\d.]+) req/s.*?(?:auth server|transform) (\d+) µs", line)
        if m:
            add(service, f"{m[1]} (through Envoy)", mode, m[2], int(m[3]))
print("\nmedian req/s, tracing off → on at 100% sampling (service CPU per request, µs):")
for (service, row, mode) in sorted(k for k in rows if k[2] == "off"):
    off, on = rows[(service, row, "off")], rows.get((service, row, "on"), [])
    if not on: continue
    med = lambda runs: statistics.median(r for r, _ in runs)
    cpu = lambda runs: "/".join(str(c) for _, c in runs if c is not None) or "-"
    print(f"  {service:9} {row:40} {med(off):>10,.0f} → {med(on):>10,.0f}  {med(on) / med(off) - 1:+.1%}"
          f"   CPU {cpu(off)} → {cpu(on)}")
PY
