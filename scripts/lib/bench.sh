# Shared by the load benchmarks (scripts/bench-*.sh); sourced after `cd` to the repo root.
# Sets up $work (a temporary directory) and $pids (processes killed on exit), and defines
# the helpers below. Messages are prefixed with the calling script's name.

bench_name=$(basename "$0" .sh)
envoy=.venv/bin/envoy

fail() { echo "$bench_name: $*" >&2; exit 1; }

# require TOOL...: each must be on PATH (or a path that exists).
require() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || fail "$tool not found; run scripts/install-test-deps.sh"
    done
}

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$bench_name: nothing listens on port $1" >&2
    return 1
}
# service_tracing: the variables that turn a service's tracing on, at 100% sampling, exporting
# to the OTLP/gRPC collector at $TRACE_TO, when that is set (scripts/bench-tracing.sh sets it);
# nothing otherwise. Used unquoted: `env ... $(service_tracing) "$bin"`.
service_tracing() {
    [ -z "${TRACE_TO:-}" ] || echo "OTEL_EXPORTER_OTLP_ENDPOINT=$TRACE_TO OTEL_TRACES_SAMPLER=always_on"
}
rss() { awk '/VmRSS/{print $2" "$3}' "/proc/$1/status"; }
clk_tck=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# cpu_ms PID TICKS_BEFORE: CPU milliseconds (user + system) the process used since then.
cpu_ms() { echo $(( ($(cpu_ticks "$1") - $2) * 1000 / clk_tck )); }

# start_envoy NAME TEMPLATE CONCURRENCY [VAR=VALUE...]: renders envoy/bench/TEMPLATE with free
# ENVOY_ADMIN_PORT and GATEWAY_PORT and the given variables, starts Envoy and waits until it
# is ready. Sets envoy_pid, envoy_port, envoy_admin. UPSTREAM_PORT defaults to $upstream_port,
# else to the Envoy's own listener (an Envoy that is itself the upstream).
start_envoy() {
    local name=$1 template=$2 concurrency=$3; shift 3
    envoy_port=$(free_port)
    envoy_admin=$(free_port)
    env ENVOY_ADMIN_PORT="$envoy_admin" GATEWAY_PORT="$envoy_port" UPSTREAM_PORT="${upstream_port:-$envoy_port}" "$@" \
        scripts/render-envoy.sh "$template" "$work/$name.yaml"
    "$envoy" -c "$work/$name.yaml" --concurrency "$concurrency" --disable-hot-restart -l warning \
        >"$work/$name.log" 2>&1 &
    envoy_pid=$!
    pids+=("$envoy_pid")
    for _ in $(seq 1 100); do
        curl -fs -o /dev/null "http://127.0.0.1:$envoy_admin/ready" && return 0
        sleep 0.1
    done
    echo "$bench_name: envoy $name did not start:" >&2
    cat "$work/$name.log" >&2
    exit 1
}
