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
[ -x /bin/busybox ] || need busybox:busybox-static
busybox=/bin/busybox
if readelf -lW "$busybox" | grep -q 'Requesting program interpreter'; then
    log "$busybox is dynamically linked; the initramfs needs busybox-static"
    exit 1
fi

# The versioned kernel packages behind the two meta packages, e.g. "linux-image-6.1.0-56-amd64
# linux-image-6.1.0-56-cloud-amd64" (one apt-cache call: each costs ~1 s).
resolve() {
    apt-cache depends linux-image-amd64 linux-image-cloud-amd64 2>/dev/null | awk '
        /^[^ ]/ { meta = $1 }
        /Depends: linux-image-[0-9]/ && !(meta in dep) { dep[meta] = $2 }
        END { print dep["linux-image-amd64"], dep["linux-image-cloud-amd64"] }'
}
updated=no
apt_update() {
    if [ $updated = no ]; then
        log "apt-get update"
        apt-get update -qq >&2
        updated=yes
    fi
}

# fetch_deb PACKAGE: path of its .deb in $out/debs, downloading it if absent.
fetch_deb() {
    local pkg=$1 deb
    mkdir -p "$out/debs"
    deb=$(ls "$out/debs/${pkg}"_*.deb 2>/dev/null | tail -n 1 || true)
    if [ -z "$deb" ]; then
        log "downloading $pkg"
        # apt-get download as root warns that _apt cannot write here; that is harmless.
        (cd "$out/debs" && apt-get download -q "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2) ||
            { apt_update && (cd "$out/debs" && apt-get download -q "$pkg" >&2 2>/dev/null); }
        deb=$(ls "$out/debs/${pkg}"_*.deb 2>/dev/null | tail -n 1 || true)
        [ -n "$deb" ] || { log "could not download $pkg"; return 1; }
    fi
    echo "$deb"
}

# install_modules TREE DEST NAME...: copies NAME... and everything they depend on from the
# unpacked kernel TREE into DEST as plain NAME.ko, and writes DEST/order with dependencies
# first. The package carries no modules.dep (depmod makes it on install), so dependencies
# come from each module's own .modinfo depends= entry. Modules the config builds in are not
# in the tree and need no loading; asking for one that is neither is an error.
install_modules() {
    local tree=$1 dest=$2
    shift 2
    local -A path=() seen=()
    local f base
    # Index by the name a module goes by in depends= lists: file name without .ko*, '-' as
    # '_' (plain parameter expansion: thousands of files, no forks).
    while IFS= read -r f; do
        base=${f##*/}
        base=${base%%.ko*}
        path[${base//-/_}]=$f
    done < <(find "$tree" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')
    rm -rf "$dest"
    mkdir -p "$dest"
    : >"$dest/order"
    visit() {
        local name=${1//-/_} file deps dep
        [ -n "${seen[$name]:-}" ] && return 0
        seen[$name]=1
        file=${path[$name]:-}
        if [ -z "$file" ]; then
            local cfg
            cfg=$(ls "$tree"/boot/config-* | head -n 1)
            log "module $name is not in $(basename "$tree") (built in? see $cfg)"
            return 1
        fi
        case $file in
            *.ko.xz) deps=$(xz -dc "$file" | tr '\0' '\n' | grep -a -m1 '^depends=' || true) ;;
            *.ko.zst) deps=$(zstd -dcq "$file" | tr '\0' '\n' | grep -a -m1 '^depends=' || true) ;;
            *.ko.gz) deps=$(gzip -dc "$file" | tr '\0' '\n' | grep -a -m1 '^depends=' || true) ;;
            *) deps=$(tr '\0' '\n' <"$file" | grep -a -m1 '^depends=' || true) ;;
        esac
        deps=${deps#depends=}
        for dep in ${deps//,/ }; do
            visit "$dep"
        done
        case $file in
            *.ko.xz) xz -dc "$file" >"$dest/$name.ko" ;;
            *.ko.zst) zstd -dcq "$file" >"$dest/$name.ko" ;;
            *.ko.gz) gzip -dc "$file" >"$dest/$name.ko" ;;
            *) cp "$file" "$dest/$name.ko" ;;
        esac
        echo "$name" >>"$dest/order"
    }
    local m
    for m in "$@"; do
        visit "$m"
    done
}

# unpack DEB DIR: the package's files under DIR (only boot/ and lib/modules/ are needed).
unpack() {
    rm -rf "$2"
    mkdir -p "$2"
    dpkg-deb -x "$1" "$2"
}

read -r l1_pkg l2_pkg < <(resolve) || true
if [ -z "${l1_pkg:-}" ] || [ -z "${l2_pkg:-}" ]; then
    apt_update
    read -r l1_pkg l2_pkg < <(resolve) || true
fi
[ -n "${l1_pkg:-}" ] && [ -n "${l2_pkg:-}" ] || { log "cannot resolve the kernel packages"; exit 1; }

# L1: the generic kernel and its KVM modules.
# The network tests' modules: see the header. nf_nat, nf_conntrack and the nf_tables core
# come in as dependencies; bridge brings stp and llc, vhost_net brings vhost and tap.
# libcrc32c (which nf_tables and nf_conntrack need) asks the crypto API for "crc32c" when it
# loads, which would make the kernel run modprobe for it: crc32c_generic goes first.
# nft_meta_bridge (meta ibrname/obrname) is there for bridge-family rules on vmkit's bridges.
l1_net_modules="tun bridge veth dummy crc32c_generic nf_tables nft_chain_nat nft_masq nft_ct nft_meta_bridge vhost_net"
l1_want="$l1_pkg irqbypass ccp kvm kvm_amd $l1_net_modules v1"
if [ "$(cat "$out/l1/.stamp" 2>/dev/null)" != "$l1_want" ]; then
    deb=$(fetch_deb "$l1_pkg")
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
l2_want="$l2_pkg virtio_mmio virtio_blk + virtio_net v1"
if [ "$(cat "$out/l2/.stamp" 2>/dev/null)" != "$l2_want" ]; then
    deb=$(fetch_deb "$l2_pkg")
    log "unpacking $(basename "$deb")"
    tmp=$out/tmp-l2
    unpack "$deb" "$tmp"
    rm -rf "$out/l2"
    mkdir -p "$out/l2"
    cp "$tmp"/boot/vmlinuz-* "$out/l2/bzImage"
    cp "$tmp"/boot/config-* "$out/l2/config"
    python3 "$here/extract-vmlinux.py" "$out/l2/bzImage" "$out/l2/vmlinux" >&2
    install_modules "$tmp" "$out/l2/modules" virtio_mmio virtio_blk
    # virtio_net's dependencies that l2/modules already loads (virtio, virtio_ring) would fail
    # a second insmod: the network set keeps only what is new.
    install_modules "$tmp" "$out/l2/modules-net" virtio_net
    grep -vxF -f "$out/l2/modules/order" "$out/l2/modules-net/order" >"$out/l2/modules-net/order.new" || true
    mv "$out/l2/modules-net/order.new" "$out/l2/modules-net/order"
    for ko in "$out/l2/modules-net"/*.ko; do
        grep -qxF "$(basename "$ko" .ko)" "$out/l2/modules-net/order" || rm "$ko"
    done
    rm -rf "$tmp"
    echo "$l2_want" >"$out/l2/.stamp"
fi
# PVH boot (what vmkit's boot_linux uses) needs XEN_ELFNOTE_PHYS32_ENTRY: a Xen note of
# type 18 (0x12).
if readelf -nW "$out/l2/vmlinux" | grep -q 'Xen .*(0x00000012)'; then
    log "l2/vmlinux has the PVH entry note (Xen, type 18)"
else
    log "l2/vmlinux has NO PVH entry note (Xen, type 18): PVH boot will not work"
fi

# The disk pattern: see l2-init.
if [ ! -s "$out/pattern.bin" ]; then
    for i in $(seq 0 127); do printf 'VMKIT-PATTERN %04d/0128 0123456\n' "$i"; done >"$out/pattern.bin.tmp"
    mv "$out/pattern.bin.tmp" "$out/pattern.bin"
fi
[ "$(stat -c %s "$out/pattern.bin")" -eq 4096 ] || { log "pattern.bin is not 4096 bytes"; exit 1; }

# The L2 initramfs, rebuilt when its inputs change.
initrd_want=$(cat "$here/l2-init" "$here/assets.sh" "$busybox" "$out/l2/modules/order" \
    "$out/pattern.bin" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$out/l2/.initrd-stamp" 2>/dev/null)" != "$initrd_want" ] || [ ! -s "$out/l2/initrd.cpio.gz" ]; then
    log "building l2/initrd.cpio.gz"
    stage=$out/tmp-l2-initrd
    rm -rf "$stage"
    mkdir -p "$stage"/{bin,dev,proc,sys,tmp,modules}
    cp "$busybox" "$stage/bin/busybox"
    for applet in $("$busybox" --list); do
        [ "$applet" = busybox ] || ln -s busybox "$stage/bin/$applet"
    done
    cp "$here/l2-init" "$stage/init"
    chmod 755 "$stage/init"
    cp "$out/l2/modules"/* "$stage/modules/"
    cp "$out/pattern.bin" "$stage/pattern.bin"
    cpio_dir "$stage" | gzip -n -9 >"$out/l2/initrd.cpio.gz.tmp"
    mv "$out/l2/initrd.cpio.gz.tmp" "$out/l2/initrd.cpio.gz"
    rm -rf "$stage"
    echo "$initrd_want" >"$out/l2/.initrd-stamp"
fi

# netbench: rebuilt when its source or the compiler changes. Static (crt-static: glibc's
# libc.a), stripped: it goes into an initramfs that L2 unpacks at TCG speed.
netbench_want=$({ cat "$here/netbench.rs"; rustc -vV; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$out/.netbench-stamp" 2>/dev/null)" != "$netbench_want" ] || [ ! -x "$out/netbench" ]; then
    log "building netbench"
    rustc --edition 2021 -O -C target-feature=+crt-static -C strip=symbols \
        -o "$out/netbench.tmp" "$here/netbench.rs" >&2
    if readelf -lW "$out/netbench.tmp" | grep -q 'Requesting program interpreter'; then
        log "netbench did not link statically (is libc6-dev's libc.a installed?)"
        exit 1
    fi
    mv "$out/netbench.tmp" "$out/netbench"
    echo "$netbench_want" >"$out/.netbench-stamp"
fi

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

log "L1 kernel $l1_pkg, modules: $(tr '\n' ' ' <"$out/l1/modules/order")"
log "L2 kernel $l2_pkg, modules: $(tr '\n' ' ' <"$out/l2/modules/order")"
log "L2 network modules: $(tr '\n' ' ' <"$out/l2/modules-net/order")"
echo "$out"
