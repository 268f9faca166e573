#!/usr/bin/env bash
# boot_linux under signals, with Debian's kernel on this host: SIGINT stops the VM and its
# isolated network is torn down (exit status 130); after a SIGKILL leaves the network
# behind, the next run reports it, and tears it down when SIGTERM ends it (143). Every wait
# is bounded.
#
#   ci/boot-linux-signals.sh GUEST      (the directory `ci/linux-guest.sh | tail -n 1` prints)
set -euo pipefail
cd "$(dirname "$0")/.."

guest=$1
bridge=vmksigci0
cargo build --locked --release --example boot_linux
bin=target/release/examples/boot_linux
work=$(mktemp -d)
pid=

cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
    ip link del "$bridge" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

fail() {
    echo "ci/boot-linux-signals.sh: $*" >&2
    for log in "$work"/*.log; do echo "--- $log" >&2; tail -n 20 "$log" >&2; done
    exit 1
}

# Starts boot_linux on the bridge in the background, its output in $1; sets $pid. The
# default command line, as the README's command has it: its earlyprintk shows the banner here.
start() {
    "$bin" --kernel "$guest/vmlinux" --initrd "$guest/initrd.cpio.gz" \
        --net "isolated:$bridge" >"$1" 2>&1 &
    pid=$!
}

# Waits up to 120 s for $2 in the log $1 while boot_linux runs.
wait_for() {
    for _ in $(seq 600); do
        grep -qF -- "$2" "$1" && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    fail "no \"$2\" in $1"
}

# Sets $status to boot_linux's exit status, waiting up to 60 s (then it is killed and this
# fails). Not in a subshell: only this shell can wait for its child.
wait_status() {
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    kill -0 "$pid" 2>/dev/null && fail "boot_linux did not end within 60 s"
    status=0
    wait "$pid" || status=$?
}

ip link del "$bridge" 2>/dev/null || true

# Ctrl-C: the VM stops, the network goes.
start "$work/int.log"
wait_for "$work/int.log" "Linux version"
ip link show "$bridge" >/dev/null || fail "no bridge $bridge while the VM runs"
kill -INT "$pid"
wait_status
[ "$status" = 130 ] || fail "exit status $status after SIGINT, not 130"
grep -qF "boot_linux: SIGINT: stopping the VM" "$work/int.log" || fail "no SIGINT message"
grep -qF "boot_linux: net: tore down $bridge" "$work/int.log" || fail "no teardown message"
! ip link show "$bridge" >/dev/null 2>&1 || fail "$bridge is still there after SIGINT"

# SIGKILL leaves the network behind; the next run says so and takes it over.
start "$work/kill.log"
wait_for "$work/kill.log" "Linux version"
killed=$pid
kill -KILL "$pid"
wait_status
ip link show "$bridge" >/dev/null || fail "$bridge did not outlive the SIGKILL"
start "$work/next.log"
wait_for "$work/next.log" "network $bridge was left behind by process $killed, which no longer exists"
wait_for "$work/next.log" "Linux version"
kill -TERM "$pid"
wait_status
[ "$status" = 143 ] || fail "exit status $status after SIGTERM, not 143"
grep -qF "boot_linux: net: tore down $bridge" "$work/next.log" || fail "no teardown message"
! ip link show "$bridge" >/dev/null 2>&1 || fail "$bridge is still there after SIGTERM"
echo "ci/boot-linux-signals.sh: SIGINT, SIGKILL then SIGTERM: ok"
