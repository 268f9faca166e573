#!/usr/bin/env bash
# boot_linux's answers to bad input, as a user sees them: for each, exit status 1 and a
# message on stderr that names the flag or file and the limit; `--help` exits 0. Needs
# Debian's kernel for the image cases; nothing here starts a guest.
#
#   ci/boot-linux-refusals.sh GUEST     (the directory `ci/linux-guest.sh | tail -n 1` prints)
set -euo pipefail
cd "$(dirname "$0")/.."

guest=$1
cargo build --locked --release --example boot_linux
bin=target/release/examples/boot_linux
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0

# refused EXPECTED ARGS...: boot_linux ARGS exits 1 with EXPECTED in its message.
refused() {
    local expected=$1 status=0 err
    shift
    err=$("$bin" "$@" 2>&1 >/dev/null) || status=$?
    if [ "$status" -ne 1 ] || [[ $err != *"$expected"* ]]; then
        echo "ci/boot-linux-refusals.sh: boot_linux $*: status $status, message: $err" >&2
        echo "  expected status 1 and: $expected" >&2
        failures=$((failures + 1))
    fi
}

head -c 1000000 "$guest/bzImage" >"$work/truncated.bzImage"
head -c 20000 "$guest/bzImage" >"$work/small.bzImage"
head -c 1000000 "$guest/vmlinux" >"$work/truncated.vmlinux"
: >"$work/empty.img"
head -c 1000 /dev/zero >"$work/odd.img"
long=$(printf 'x%.0s' $(seq 3000))

k=(--kernel "$guest/vmlinux")
refused "$work/truncated.bzImage: the bzImage is truncated" --kernel "$work/truncated.bzImage"
refused "but the file is 20000 bytes" --kernel "$work/small.bzImage"
refused "$work/truncated.vmlinux: the ELF image is truncated" --kernel "$work/truncated.vmlinux"
refused "--initrd $work: the initrd is a directory" "${k[@]}" --initrd "$work"
refused "--initrd $work/empty.img: the initrd is empty" "${k[@]}" --initrd "$work/empty.img"
refused "--mem 0: booting Linux needs at least 16 MiB" "${k[@]}" --mem 0
refused "--mem 1: booting Linux needs at least 16 MiB" "${k[@]}" --mem 1
refused "this needs --mem 68 or more" --kernel "$guest/bzImage" --mem 20
refused "add --mem-overcommit" "${k[@]}" --mem 100000000
refused "--cmdline is 3000 bytes; this kernel (cmdline_size in its setup header) takes at most" \
    --kernel "$guest/bzImage" --cmdline "$long"
refused "--cmdline has '\\t' (U+0009) at byte 7" "${k[@]}" --cmdline $'console\tttyS0'
refused "--disk $work/empty.img: it is empty (0 bytes)" "${k[@]}" --disk "$work/empty.img"
refused "--disk /dev/null: it is a character device" "${k[@]}" --disk /dev/null
refused "is not a multiple of the 512-byte sector" "${k[@]}" --disk "$work/odd.img"
refused "--kernel is required" --mem 64
refused "unexpected argument \"--bogus\"" "${k[@]}" --bogus

status=0
out=$("$bin" --help) || status=$?
if [ "$status" -ne 0 ] || [[ $out != "usage: boot_linux --kernel IMAGE"* ]]; then
    echo "ci/boot-linux-refusals.sh: --help did not print the usage to stdout with status 0" >&2
    failures=$((failures + 1))
fi

[ "$failures" -eq 0 ] || exit 1
echo "ci/boot-linux-refusals.sh: every bad input refused with its flag and limit: ok"
