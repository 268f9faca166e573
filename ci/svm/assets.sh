#!/usr/bin/env bash
# Prepares what the SVM harness boots, cached under target/harness/svm/ (or $VMKIT_SVM_ASSETS):
#   l1/vmlinuz, l1/modules/*.ko, l1/modules/order
#       Debian's generic kernel (the package behind linux-image-amd64) for L1, and its KVM
#       modules (irqbypass, ccp, kvm, kvm-amd with their dependencies), decompressed, in
#       load order. The kernel package is unpacked here, never installed.
#       The L1 modules also hold what the network tests need: TAP devices, bridges, veth
#       pairs, dummy links, the nftables NAT rules of crates/vmkit-net (nft_chain_nat,
#       nft_masq, nft_ct with conntrack and nf_nat) and vhost-net for QEMU's vhost datapath.
#       L1 has no modprobe, so nothing is loaded on demand: all of it is loaded at boot.
#   l2/bzImage, l2/vmlinux, l2/initrd.cpio.gz, l2/modules/
#       Debian's cloud kernel (the package behind linux-image-cloud-amd64) for L2, the
#       uncompressed ELF vmlinux taken out of that bzImage (it carries the PVH entry note),
#       and the busybox initramfs whose /init is ci/svm/l2-init.
#   l2/initrd-net.cpio.gz, l2/modules-net/, netbench
#       the network tests' initramfs: initrd.cpio.gz followed by a second archive (the kernel
#       unpacks both) with /modules-net (virtio_net and what it needs beyond l2/modules) and
#       /bin/netbench, so that the boot tests and the boot benchmark keep the small one.
#       netbench is ci/svm/netbench.rs built static (it runs in L1 and in L2's busybox).
#   l2/initrd-balloon.cpio.gz, l2/modules-balloon/
#       the balloon tests' initramfs: initrd.cpio.gz followed by an archive with
#       /modules-balloon (virtio_balloon: Debian's cloud kernel builds it as a module), which
#       l2-init loads only when its command line asks for the balloon scenario.
#   pattern.bin
#       the 4096-byte pattern the L2 guest writes to its disk at 1 MiB (see l2-init).
# Idempotent: a second run with nothing changed only checks the stamps. The last line of
# stdout is the absolute path of the asset directory; everything else goes to stderr.
#
#   ci/svm/assets.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=common.sh
. "$here/common.sh"
out=${VMKIT_SVM_ASSETS:-$root/target/harness/svm}
mkdir -p "$out"
out=$(cd "$out" && pwd)

need apt-get:apt dpkg-deb:dpkg python3:python3 lz4:lz4 xz:xz-utils zstd:zstd gzip:gzip \
    cpio:cpio readelf:binutils sha256sum:coreutils
command -v rustc >/dev/null || { log "rustc is missing (netbench is built with it)"; exit 1; }
busybox=$(static_busybox)

kernels=$(kernel_packages linux-image-amd64 linux-image-cloud-amd64)
read -r l1_pkg l2_pkg <<<"$kernels"

# L1: the generic kernel and its KVM modules.
# The network tests' modules: see the header. nf_nat, nf_conntrack and the nf_tables core
# come in as dependencies; bridge brings stp and llc, vhost_net brings vhost and tap.
# libcrc32c (which nf_tables and nf_conntrack need) asks the crypto API for "crc32c" when it
# loads, which would make the kernel run modprobe for it: crc32c_generic goes first.
# nft_meta_bridge (meta ibrname/obrname) is there for bridge-family rules on vmkit's bridges.
l1_net_modules="tun bridge veth dummy crc32c_generic nf_tables nft_chain_nat nft_masq nft_ct nft_meta_bridge vhost_net"
l1_want="$l1_pkg irqbypass ccp kvm kvm_amd $l1_net_modules v1"
if [ "$(cat "$out/l1/.stamp" 2>/dev/null)" != "$l1_want" ]; then
    deb=$(fetch_deb "$out/debs" "$l1_pkg")
    log "unpacking $(basename "$deb")"
    tmp=$out/tmp-l1
    unpack "$deb" "$tmp"
    rm -rf "$out/l1"
    mkdir -p "$out/l1"
    cp "$tmp"/boot/vmlinuz-* "$out/l1/vmlinuz"
    cp "$tmp"/boot/config-* "$out/l1/config"
    # kvm-amd pulls in kvm (and irqbypass) and ccp through its depends= list.
    # shellcheck disable=SC2086 # a list of names
    install_modules "$tmp" "$out/l1/modules" irqbypass ccp kvm kvm_amd $l1_net_modules
    rm -rf "$tmp"
    echo "$l1_want" >"$out/l1/.stamp"
fi

# L2: the cloud kernel, its vmlinux and the virtio modules.
l2_want="$l2_pkg virtio_mmio virtio_blk virtio_pci + virtio_net + virtio_balloon v1"
if [ "$(cat "$out/l2/.stamp" 2>/dev/null)" != "$l2_want" ]; then
    deb=$(fetch_deb "$out/debs" "$l2_pkg")
    log "unpacking $(basename "$deb")"
    tmp=$out/tmp-l2
    unpack "$deb" "$tmp"
    rm -rf "$out/l2"
    mkdir -p "$out/l2"
    kernel_images "$tmp" "$out/l2"
    install_modules "$tmp" "$out/l2/modules" virtio_mmio virtio_blk virtio_pci
    # virtio_net's dependencies that l2/modules already loads (virtio, virtio_ring) would fail
    # a second insmod: the network set keeps only what is new.
    install_modules "$tmp" "$out/l2/modules-net" virtio_net
    grep -vxF -f "$out/l2/modules/order" "$out/l2/modules-net/order" >"$out/l2/modules-net/order.new" || true
    mv "$out/l2/modules-net/order.new" "$out/l2/modules-net/order"
    for ko in "$out/l2/modules-net"/*.ko; do
        grep -qxF "$(basename "$ko" .ko)" "$out/l2/modules-net/order" || rm "$ko"
    done
    # The same for the balloon's driver.
    install_modules "$tmp" "$out/l2/modules-balloon" virtio_balloon
    grep -vxF -f "$out/l2/modules/order" "$out/l2/modules-balloon/order" >"$out/l2/modules-balloon/order.new" || true
    mv "$out/l2/modules-balloon/order.new" "$out/l2/modules-balloon/order"
    for ko in "$out/l2/modules-balloon"/*.ko; do
        grep -qxF "$(basename "$ko" .ko)" "$out/l2/modules-balloon/order" || rm "$ko"
    done
    rm -rf "$tmp"
    echo "$l2_want" >"$out/l2/.stamp"
fi
pvh_note "$out/l2/vmlinux"

# The disk pattern: see l2-init.
if [ ! -s "$out/pattern.bin" ]; then
    for i in $(seq 0 127); do printf 'VMKIT-PATTERN %04d/0128 0123456\n' "$i"; done >"$out/pattern.bin.tmp"
    mv "$out/pattern.bin.tmp" "$out/pattern.bin"
fi
[ "$(stat -c %s "$out/pattern.bin")" -eq 4096 ] || { log "pattern.bin is not 4096 bytes"; exit 1; }

# The L2 initramfs, rebuilt when its inputs change.
initrd_want=$(cat "$here/l2-init" "$here/assets.sh" "$here/common.sh" "$busybox" "$out/l2/modules/order" \
    "$out/pattern.bin" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$out/l2/.initrd-stamp" 2>/dev/null)" != "$initrd_want" ] || [ ! -s "$out/l2/initrd.cpio.gz" ]; then
    log "building l2/initrd.cpio.gz"
    busybox_initrd "$out/l2/initrd.cpio.gz" "$busybox" "$here/l2-init" "$out/l2/modules" \
        "$out/pattern.bin"
    echo "$initrd_want" >"$out/l2/.initrd-stamp"
fi

# netbench: rebuilt when its source or the compiler changes (common.sh).
build_netbench "$out/netbench" "$out/.netbench-stamp"

# The network tests' initramfs: the base one, then an archive that adds to its tree.
initrd_net_want=$(cat "$out/l2/initrd.cpio.gz" "$out/netbench" "$out/l2/modules-net"/* \
    "$here/assets.sh" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$out/l2/.initrd-net-stamp" 2>/dev/null)" != "$initrd_net_want" ] ||
    [ ! -s "$out/l2/initrd-net.cpio.gz" ]; then
    log "building l2/initrd-net.cpio.gz"
    stage=$out/tmp-l2-initrd-net
    rm -rf "$stage"
    mkdir -p "$stage"/{bin,modules-net}
    cp "$out/netbench" "$stage/bin/netbench"
    cp "$out/l2/modules-net"/* "$stage/modules-net/"
    { cat "$out/l2/initrd.cpio.gz" && cpio_dir "$stage" | gzip -n -9; } >"$out/l2/initrd-net.cpio.gz.tmp"
    mv "$out/l2/initrd-net.cpio.gz.tmp" "$out/l2/initrd-net.cpio.gz"
    rm -rf "$stage"
    echo "$initrd_net_want" >"$out/l2/.initrd-net-stamp"
fi

# The balloon tests' initramfs, the same way.
initrd_balloon_want=$(cat "$out/l2/initrd.cpio.gz" "$out/l2/modules-balloon"/* "$here/assets.sh" |
    sha256sum | cut -d' ' -f1)
if [ "$(cat "$out/l2/.initrd-balloon-stamp" 2>/dev/null)" != "$initrd_balloon_want" ] ||
    [ ! -s "$out/l2/initrd-balloon.cpio.gz" ]; then
    log "building l2/initrd-balloon.cpio.gz"
    stage=$out/tmp-l2-initrd-balloon
    rm -rf "$stage"
    mkdir -p "$stage/modules-balloon"
    cp "$out/l2/modules-balloon"/* "$stage/modules-balloon/"
    { cat "$out/l2/initrd.cpio.gz" && cpio_dir "$stage" | gzip -n -9; } >"$out/l2/initrd-balloon.cpio.gz.tmp"
    mv "$out/l2/initrd-balloon.cpio.gz.tmp" "$out/l2/initrd-balloon.cpio.gz"
    rm -rf "$stage"
    echo "$initrd_balloon_want" >"$out/l2/.initrd-balloon-stamp"
fi

log "L1 kernel $l1_pkg, modules: $(tr '\n' ' ' <"$out/l1/modules/order")"
log "L2 kernel $l2_pkg, modules: $(tr '\n' ' ' <"$out/l2/modules/order")"
log "L2 network modules: $(tr '\n' ' ' <"$out/l2/modules-net/order")"
log "L2 balloon modules: $(tr '\n' ' ' <"$out/l2/modules-balloon/order")"
echo "$out"
