#!/usr/bin/env bash
# A Linux kernel and an initramfs for vmkit's boot_linux example, in one command, without
# installing any of it: Debian's cloud kernel package (the one behind
# linux-image-cloud-amd64) is fetched with `apt-get download` and unpacked here, and a
# busybox initramfs is built around ci/linux-guest.init. Into DIR (default target/linux):
#   vmlinux          the uncompressed ELF kernel, taken out of bzImage (PVH entry note)
#   bzImage          the kernel as Debian ships it
#   initrd.cpio.gz   busybox, the virtio modules, and /init: prints "VMKIT-LINUX-USERSPACE",
#                    what the guest sees (CPUs, memory, disks, network cards), then resets
#                    the machine, which ends boot_linux with status 0
#   config, modules/, debs/   the kernel's config, the modules in the initramfs, the .deb
# Idempotent: a second run with nothing changed only checks the stamps. The last line of
# stdout is DIR's absolute path; everything else goes to stderr. Needs apt-get (Debian or a
# derivative); tools it lacks are installed when run as root, else named (ci/install.sh
# linux installs them all).
#
#   ci/linux-guest.sh [DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck disable=SC2034 # read by common.sh's log
log_prefix=linux-guest
# shellcheck source=svm/common.sh
. "$here/svm/common.sh"
if [ $# -gt 1 ] || [[ ${1:-} == -* ]]; then
    echo "usage: ci/linux-guest.sh [DIR]   (default: target/linux)" >&2
    exit 2
fi
out=${1:-$here/../target/linux}
mkdir -p "$out"
out=$(cd "$out" && pwd)

need apt-get:apt dpkg-deb:dpkg python3:python3 lz4:lz4 xz:xz-utils zstd:zstd gzip:gzip \
    cpio:cpio readelf:binutils sha256sum:coreutils
busybox=$(static_busybox)
pkgs=$(kernel_packages linux-image-cloud-amd64)
read -r pkg <<<"$pkgs"

# The kernel and the drivers of boot_linux's virtio devices (disk, console, network card),
# which Debian's cloud kernel builds as modules.
modules="virtio_mmio virtio_blk virtio_console virtio_net"
want="$pkg $modules v1"
if [ "$(cat "$out/.stamp" 2>/dev/null)" != "$want" ]; then
    deb=$(fetch_deb "$out/debs" "$pkg")
    # A newer kernel replaces the one fetched before.
    find "$out/debs" -name '*.deb' ! -name "${pkg}_*" -delete
    log "unpacking $(basename "$deb")"
    tmp=$out/tmp-unpacked
    unpack "$deb" "$tmp"
    rm -f "$out/.stamp" "$out/vmlinux" "$out/bzImage" "$out/config"
    kernel_images "$tmp" "$out"
    # shellcheck disable=SC2086 # a list of names
    install_modules "$tmp" "$out/modules" $modules
    rm -rf "$tmp"
    echo "$want" >"$out/.stamp"
fi
pvh_note "$out/vmlinux"

initrd_want=$(cat "$here/linux-guest.init" "$here/linux-guest.sh" "$here/svm/common.sh" \
    "$busybox" "$out/modules/order" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$out/.initrd-stamp" 2>/dev/null)" != "$initrd_want" ] || [ ! -s "$out/initrd.cpio.gz" ]; then
    log "building initrd.cpio.gz"
    busybox_initrd "$out/initrd.cpio.gz" "$busybox" "$here/linux-guest.init" "$out/modules"
    echo "$initrd_want" >"$out/.initrd-stamp"
fi

log "$pkg in $out; boot it with"
log "  cargo run --release --example boot_linux -- --kernel $out/vmlinux --initrd $out/initrd.cpio.gz"
echo "$out"
