#!/usr/bin/env bash
# Runs every cargo-fuzz target for a while (default 10 minutes each, FUZZ_SECONDS to change),
# two at a time on this 2-core machine, and prints each target's closing figures (executions,
# coverage, crashes). Needs the nightly toolchain and cargo-fuzz (installed when missing).
# Usage: scripts/fuzz.sh [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-600}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q '^nightly' || { echo "error: the nightly toolchain is missing: rustup toolchain install nightly" >&2; exit 1; }
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
(cd fuzz && cargo +nightly fuzz build)
mkdir -p fuzz/logs
run() {
    local target=$1
    (cd fuzz && cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1) \
        > "fuzz/logs/$target.log" 2>&1 && echo "ok" >> "fuzz/logs/$target.log" || echo "FAILED" >> "fuzz/logs/$target.log"
}
for ((i = 0; i < ${#targets[@]}; i += 2)); do
    run "${targets[$i]}" &
    [ $((i + 1)) -lt ${#targets[@]} ] && run "${targets[$((i + 1))]}" &
    wait
done
status=0
for t in "${targets[@]}"; do
    runs=$(grep -E '^stat::number_of_executed_units' "fuzz/logs/$t.log" | awk '{print $2}' | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' "fuzz/logs/$t.log" | tail -1)
    result=$(tail -1 "fuzz/logs/$t.log")
    printf '%-16s %12s executions  %-10s %s\n' "$t" "${runs:-?}" "${cov:-}" "$result"
    [ "$result" = ok ] || status=1
done
exit $status
