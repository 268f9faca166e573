#!/usr/bin/env bash
# The Linux guest that boot_linux boots in the Xen harness: dom0's own Debian kernel (its
# ELF vmlinux, which has the PVH entry note), and a busybox initramfs whose /init is the SVM
# harness's guest init (ci/svm/l2-init: markers, the virtio-blk round trip of pattern.bin at
# 1 MiB, the CPU count, then `reboot -f`) with the kernel's virtio modules that
# ci/xen/assets.sh took out of the package. Writes, under $VMKIT_XEN_ASSETS/guest:
#   initrd.cpio.gz   the initramfs (rebuilt when its inputs change)
#   pattern.bin      the 4096-byte disk pattern the host side checks afterwards
#   initrd-net.cpio.gz  the network test's (linux_net): initrd.cpio.gz followed by an archive
#                    with /modules-net (virtio_net and what it needs beyond /modules) and
#                    /bin/netbench, as the SVM harness's l2/initrd-net.cpio.gz
#   netbench         ci/svm/netbench.rs, static: in the guest and in dom0 (its listener)
# Run after assets.sh.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
assets=${VMKIT_XEN_ASSETS:-$repo/target/harness/xen}
guest=$assets/guest
log_prefix=xen-guest
# shellcheck source=../svm/common.sh
. "$repo/ci/svm/common.sh"

[ -f "$guest/modules/order" ] || { log "no $guest/modules: run ci/xen/assets.sh first"; exit 1; }
pvh_note "$assets/vmlinux"
busybox=$(static_busybox)

# The pattern, as ci/svm/assets.sh makes it: 128 lines of 32 bytes.
if [ ! -s "$guest/pattern.bin" ]; then
    for i in $(seq 0 127); do printf 'VMKIT-PATTERN %04d/0128 0123456\n' "$i"; done >"$guest/pattern.bin.tmp"
    mv "$guest/pattern.bin.tmp" "$guest/pattern.bin"
fi
[ "$(stat -c %s "$guest/pattern.bin")" -eq 4096 ] || { log "pattern.bin is not 4096 bytes"; exit 1; }

want=$(cat "$repo/ci/svm/l2-init" "$here/guest.sh" "$repo/ci/svm/common.sh" "$busybox" \
    "$guest/modules"/* "$guest/pattern.bin" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$guest/.initrd-stamp" 2>/dev/null)" != "$want" ] || [ ! -s "$guest/initrd.cpio.gz" ]; then
    log "building $guest/initrd.cpio.gz"
    busybox_initrd "$guest/initrd.cpio.gz" "$busybox" "$repo/ci/svm/l2-init" "$guest/modules" \
        "$guest/pattern.bin"
    echo "$want" >"$guest/.initrd-stamp"
fi

# The network test's initramfs: the base one, then an archive that adds to its tree (the
# kernel unpacks both).
build_netbench "$guest/netbench" "$guest/.netbench-stamp"
want_net=$(cat "$guest/initrd.cpio.gz" "$guest/netbench" "$guest/modules-net"/* | sha256sum | cut -d' ' -f1)
if [ "$(cat "$guest/.initrd-net-stamp" 2>/dev/null)" != "$want_net" ] || [ ! -s "$guest/initrd-net.cpio.gz" ]; then
    log "building $guest/initrd-net.cpio.gz"
    stage=$guest/initrd-net.stage
    rm -rf "$stage"
    mkdir -p "$stage"/{bin,modules-net}
    cp "$guest/netbench" "$stage/bin/netbench"
    cp "$guest/modules-net"/* "$stage/modules-net/"
    { cat "$guest/initrd.cpio.gz" && cpio_dir "$stage" | gzip -n -9; } >"$guest/initrd-net.cpio.gz.tmp"
    mv "$guest/initrd-net.cpio.gz.tmp" "$guest/initrd-net.cpio.gz"
    rm -rf "$stage"
    echo "$want_net" >"$guest/.initrd-net-stamp"
fi
