#!/usr/bin/env bash
# Builds and runs every fuzz target for SECONDS each (default 60), starting
# from the checked-in seed corpus, with debug assertions (overflow checks)
# on. Fails on a crash, leak or timeout in any target.
# Targets run JOBS at a time (default: the number of cores; each libFuzzer run
# is single-threaded), each one's output printed whole when it ends. While the
# process FUZZ_YIELD_TO_PID lives (CI's SVM harness, one emulated CPU), one at
# a time, so that process keeps a core; JOBS again once it has ended.
# Usage: fuzz/run.sh [SECONDS] [JOBS]
set -euo pipefail

secs="${1:-60}"
jobs="${2:-$(nproc)}"
cd "$(dirname "$0")"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=(split_queue packed_queue virtio_blk_request snapshot_reader virtio_net_tx virtio_net_ctrl virtio_balloon device_state mmio_restore kernel_image migration_stream pci_config ioapic_mmio guest_paging)
cargo +nightly fuzz build -O -a

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT

# run_one TARGET: one target on a scratch copy of its corpus (so runs do not
# grow the committed corpus), its output in $logs/TARGET.log.
run_one() {
    local t=$1 work status=0
    exec >"$logs/$t.log" 2>&1
    work="$(mktemp -d)"
    cp -r "corpus/$t/." "$work/" &&
        cargo +nightly fuzz run -O -a "$t" "$work" -- \
            -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 ||
        status=$?
    rm -rf "$work"
    return "$status"
}

# report TARGET STATUS: prints a finished target's output and verdict.
failed=()
report() {
    echo "== fuzz $1 for ${secs}s"
    cat "$logs/$1.log" || true
    if [ "$2" -ne 0 ]; then
        echo "fuzz target $1 failed; reproducer in fuzz/artifacts/$1/" >&2
        failed+=("$1")
    fi
}

# jobs_now: how many targets may run at this moment.
jobs_now() {
    if [ -n "${FUZZ_YIELD_TO_PID:-}" ] && kill -0 "$FUZZ_YIELD_TO_PID" 2>/dev/null; then
        echo 1
    else
        echo "$jobs"
    fi
}

declare -A running=() # pid -> target
for t in "${targets[@]}"; do
    while [ "${#running[@]}" -ge "$(jobs_now)" ]; do
        status=0
        wait -n -p done_pid "${!running[@]}" || status=$?
        report "${running[$done_pid]}" "$status"
        unset "running[$done_pid]"
    done
    run_one "$t" &
    running[$!]=$t
done
while [ "${#running[@]}" -gt 0 ]; do
    status=0
    wait -n -p done_pid "${!running[@]}" || status=$?
    report "${running[$done_pid]}" "$status"
    unset "running[$done_pid]"
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: failed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran ${secs}s without a crash (up to $jobs at a time)"
