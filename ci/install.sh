#!/usr/bin/env bash
# Installs the Debian packages vmkit's build and tests need, if any is missing: a C toolchain
# for the guest kernel, Xen's libraries for the Xen backend, ip and nft for the network
# tests, QEMU, busybox and cpio for the QEMU harnesses (ci/svm, ci/xen).
#
#   ci/install.sh
set -euo pipefail

need_apt=()
command -v cc >/dev/null || need_apt+=(gcc)
command -v ld >/dev/null || need_apt+=(binutils)
[ -e /usr/include/xenctrl.h ] || need_apt+=(libxen-dev)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v nft >/dev/null || need_apt+=(nftables)
command -v qemu-system-x86_64 >/dev/null || need_apt+=(qemu-system-x86)
dpkg-query -W -f="\${Status}" busybox-static 2>/dev/null | grep -q "ok installed" || need_apt+=(busybox-static)
command -v cpio >/dev/null || need_apt+=(cpio)
command -v python3 >/dev/null || need_apt+=(python3)
if [ ${#need_apt[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "ci/install.sh: please install ${need_apt[*]}" >&2
    exit 1
fi
echo "ci/install.sh: installing ${need_apt[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need_apt[@]}"
