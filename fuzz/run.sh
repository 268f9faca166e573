#!/usr/bin/env bash
# Builds and runs every fuzz target for SECONDS each (default 60), starting
# from the checked-in seed corpus, with debug assertions (overflow checks)
# on. Fails on the first crash, leak or timeout.
# Usage: fuzz/run.sh [SECONDS]
set -euo pipefail

secs="${1:-60}"
cd "$(dirname "$0")"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=(split_queue packed_queue virtio_blk_request snapshot_reader virtio_net_tx virtio_net_ctrl virtio_balloon device_state mmio_restore kernel_image)
cargo +nightly fuzz build -O -a

for t in "${targets[@]}"; do
    # Work on a scratch copy so runs do not grow the committed corpus.
    work="$(mktemp -d)"
    cp -r "corpus/$t/." "$work/"
    echo "== fuzz $t for ${secs}s"
    if ! cargo +nightly fuzz run -O -a "$t" "$work" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
        echo "fuzz target $t failed; reproducer in fuzz/artifacts/$t/" >&2
        rm -rf "$work"
        exit 1
    fi
    rm -rf "$work"
done
echo "fuzz: all targets ran ${secs}s without a crash"
