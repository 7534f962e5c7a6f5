#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ one after another (the machine has two cores), each for
# FUZZ_SECONDS (default 60), and fails if any of them finds a crash, a panic, a leak, an input
# over 10 s or a process over 512 MiB. With arguments, runs only the targets named.
#
# Each target starts from its committed seeds (fuzz/corpus/<target>/seed-*) and its known
# crashers (fuzz/regressions/<target>/), and adds what it finds to fuzz/corpus/<target>/
# (ignored by git). Crashes land in fuzz/artifacts/<target>/, the log in
# fuzz/artifacts/<target>.log; reproduce one with `cargo +nightly fuzz run <target> <file>`.
#
# Needs the nightly toolchain (`rustup toolchain install nightly`); installs cargo-fuzz.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-60}

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzzing needs the nightly toolchain: rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# Build first, so that run times below are fuzzing time.
if [ ${#targets[@]} -eq 1 ]; then
    cargo +nightly fuzz build "${targets[0]}"
else
    cargo +nightly fuzz build
fi

failed=()
summary=()
for target in "${targets[@]}"; do
    corpus=(fuzz/corpus/"$target")
    mkdir -p "${corpus[0]}" fuzz/artifacts
    [ -d fuzz/regressions/"$target" ] && corpus+=(fuzz/regressions/"$target")
    log=fuzz/artifacts/"$target".log
    echo "== $target: ${FUZZ_SECONDS}s"
    start=$(date +%s)
    if cargo +nightly fuzz run "$target" "${corpus[@]}" -- \
        -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=512 -timeout=10 -print_final_stats=1 2>&1 | tee "$log" | grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^==[0-9]+==|panicked|^Done '; [ "${PIPESTATUS[0]}" -eq 0 ]; then
        status=ok
    else
        status=FAILED
        failed+=("$target")
    fi
    runs=$(grep -oE '^stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')
    rate=$(grep -oE '^stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')
    summary+=("$(printf '%-24s %-7s %6ss %12s runs %8s exec/s' "$target" "$status" "$(( $(date +%s) - start ))" "$runs" "$rate")")
done

echo
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "crashed: ${failed[*]} (see fuzz/artifacts/)" >&2
    exit 1
fi
