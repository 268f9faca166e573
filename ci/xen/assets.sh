#!/usr/bin/env bash
# Fetches and unpacks what the Xen harness boots: Debian's Xen 4.17 hypervisor, the Debian
# dom0 kernel and its Xen modules, and the Xen userspace tools with their libraries.
# Idempotent: a stamp records the package versions; a second run with the same versions
# does nothing. Output goes to $VMKIT_XEN_ASSETS (default target/harness/xen).
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
assets=${VMKIT_XEN_ASSETS:-$repo/target/harness/xen}
mkdir -p "$assets"

# Host tools: QEMU runs Xen, busybox-static is dom0's userland, cpio packs the initramfs.
# libxen-dev lets vmkit's `xen` feature link. Installed only when missing (CI starts fresh).
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
[ -e /usr/include/xenctrl.h ] || need+=(libxen-dev)
if [ ${#need[@]} -gt 0 ]; then
    echo "assets: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Packages unpacked (never installed): the hypervisor, the tools, their Xen libraries, and
# (added by resolve) the versioned kernel behind linux-image-amd64 (the -cloud flavour has
# no dom0 support).
base_pkgs=(xen-hypervisor-4.17-amd64 xen-utils-4.17 xen-utils-common xenstore-utils
    libxencall1 libxendevicemodel1 libxenevtchn1 libxenforeignmemory1 libxengnttab1
    libxenhypfs1 libxenmisc4.17 libxenstore4 libxentoolcore1 libxentoollog1 libyajl2)

# Sets kpkg and want (one `package=version` a line) from apt's lists; fails if one is missing.
resolve() {
    local p
    kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ && !k {print $2; k = 1}')
    [ -n "$kpkg" ] || return 1
    pkgs=("${base_pkgs[@]}" "$kpkg")
    # One apt-cache call for all candidates (each call costs about a second).
    want=$(apt-cache policy "${pkgs[@]}" 2>/dev/null | awk '
        /^[^ ].*:$/ {p = substr($1, 1, length($1) - 1)}
        /^  Candidate:/ {if ($2 != "(none)") print p "=" $2}')
    for p in "${pkgs[@]}"; do
        grep -q "^$p=" <<<"$want" || return 1
    done
}

# A fresh machine has no lists yet (or stale ones): update once and try again.
if ! resolve; then
    apt-get update -qq
    resolve || { echo "assets: apt has no candidate for one of: ${pkgs[*]}" >&2; exit 1; }
fi
# What is taken out of the packages: bumped when that changes (a module added), so that a
# tree unpacked before is redone.
layout=2
if [ -f "$assets/stamp" ] && [ "$(cat "$assets/stamp")" = "$want layout $layout" ] &&
    [ -f "$assets/xen" ] && [ -f "$assets/vmlinuz" ] && [ -d "$assets/root" ] &&
    [ -f "$assets/guest/modules/order" ] && [ -f "$assets/guest/modules-net/order" ]; then
    echo "assets: up to date in $assets"
    exit 0
fi

echo "assets: fetching ${#pkgs[@]} packages"
rm -rf "$assets/debs" "$assets/root" "$assets/modules" "$assets/stamp"
mkdir -p "$assets/debs" "$assets/root" "$assets/modules"
# apt-get download drops privileges to _apt; a world-writable dir avoids its warning.
chmod 777 "$assets/debs"
# shellcheck disable=SC2086 # one package=version a word
if ! (cd "$assets/debs" && apt-get download -qq $want); then
    # Stale lists name versions the mirror no longer has.
    apt-get update -qq
    resolve
    (cd "$assets/debs" && apt-get download -qq $want)
fi
for d in "$assets"/debs/*.deb; do dpkg-deb -x "$d" "$assets/root"; done

# QEMU's -kernel loads a multiboot ELF, not the gzip Debian ships.
gunzip -c "$assets"/root/boot/xen-4.17-amd64.gz >"$assets/xen"
kver=${kpkg#linux-image-}
cp "$assets/root/boot/vmlinuz-$kver" "$assets/vmlinuz"
# Xen's dom0 builder takes the bare ELF too; unpacking the xz payload here instead of in
# the emulated machine saves ~10 s of every boot. Falls back to the bzImage.
python3 - "$assets/vmlinuz" "$assets/vmlinux" <<'PY' || rm -f "$assets/vmlinux"
import gzip, lzma, struct, sys
image = open(sys.argv[1], "rb").read()
# Boot protocol 2.08+: setup sectors at 0x1f1, payload offset and length at 0x248.
setup = image[0x1F1] or 4
offset, length = struct.unpack_from("<II", image, 0x248)
payload = image[(setup + 1) * 512 + offset:][:length]
if payload.startswith(b"\xfd7zXZ"):
    elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
elif payload.startswith(b"\x1f\x8b"):
    elf = gzip.decompress(payload)
else:
    sys.exit("unknown kernel compression %r" % payload[:6])
if not elf.startswith(b"\x7fELF"):
    sys.exit("kernel payload is no ELF")
open(sys.argv[2], "wb").write(elf)
PY

# The dom0 modules and their dependencies (read from each module's modinfo section),
# decompressed on the host so busybox insmod can load them; `order` lists load order.
moddir=$assets/root/lib/modules/$kver
: >"$assets/modules/order"
add_module() {
    local name=$1 f dep
    grep -qx "$name" "$assets/modules/order" && return 0
    if grep -qE "/$name\.ko" "$moddir/modules.builtin"; then return 0; fi
    f=$(find "$moddir/kernel" \( -name "$name.ko" -o -name "$name.ko.xz" -o -name "$name.ko.zst" \) | head -1)
    [ -n "$f" ] || { echo "assets: module $name not found" >&2; exit 1; }
    case $f in
        *.xz) xz -dc "$f" >"$assets/modules/$name.ko" ;;
        *.zst) zstd -qdc "$f" >"$assets/modules/$name.ko" ;;
        *) cp "$f" "$assets/modules/$name.ko" ;;
    esac
    for dep in $(grep -a -o -m 1 'depends=[^[:cntrl:]]*' "$assets/modules/$name.ko" | sed 's/^depends=//; s/,/ /g'); do
        add_module "$dep"
    done
    echo "$name" >>"$assets/modules/order"
}
for m in xen-privcmd xen-evtchn xen-gntdev xen-gntalloc xenfs; do add_module "$m"; done
# The linux_net test's network in dom0: a TAP (tun) on a bridge (bridge, with stp and llc).
for m in tun bridge; do add_module "$m"; done
# The same kernel boots as a vmkit guest (ci/xen/guest.sh): its virtio drivers, with
# their dependencies, for the guest's initramfs.
log_prefix=xen-assets
# shellcheck source=../svm/common.sh
. "$repo/ci/svm/common.sh"
rm -rf "$assets/guest/modules" "$assets/guest/modules-net"
mkdir -p "$assets/guest"
install_modules "$assets/root" "$assets/guest/modules" virtio_mmio virtio_blk
# The network test's card driver, in a set of its own (ci/xen/guest.sh's initrd-net.cpio.gz),
# without what the base set already loads (a second insmod of it would fail).
install_modules "$assets/root" "$assets/guest/modules-net" virtio_net
grep -vxF -f "$assets/guest/modules/order" "$assets/guest/modules-net/order" \
    >"$assets/guest/modules-net/order.new" || true
mv "$assets/guest/modules-net/order.new" "$assets/guest/modules-net/order"
for ko in "$assets/guest/modules-net"/*.ko; do
    grep -qxF "$(basename "$ko" .ko)" "$assets/guest/modules-net/order" || rm "$ko"
done
# Keep the tree small: the tools need no kernel modules tree or firmware.
rm -rf "$assets/root/lib/modules" "$assets/root/usr/share/doc" "$assets/root/usr/share/man" "$assets/debs"

printf '%s' "$want layout $layout" >"$assets/stamp"
echo "assets: ready in $assets (kernel $kver, modules: $(tr '\n' ' ' <"$assets/modules/order"), guest modules: $(tr '\n' ' ' <"$assets/guest/modules/order"), network: $(tr '\n' ' ' <"$assets/guest/modules-net/order"))"
