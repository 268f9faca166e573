#!/usr/bin/env bash
# Installs the Debian packages that the chosen stages of ci/test.sh need (default: all of
# them), if any is missing. Without root or without apt-get it installs nothing: it names
# each missing tool, the package that has it, the stages that need it and why, and fails.
#
#   ci/install.sh [host|linux|svm|xen]...
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=svm/common.sh
. "$here/svm/common.sh"

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(host linux svm xen)
for stage in "${stages[@]}"; do
    case $stage in
        host | linux | svm | xen) ;;
        *)
            echo "ci/install.sh: unknown stage $stage (host, linux, svm or xen)" >&2
            exit 2
            ;;
    esac
done

# What each stage needs. Every stage builds the workspace's tests, and so the minimal guest
# kernel (guests/build.rs: `cc`, linking with GNU ld); linux gets Debian's cloud kernel with
# ci/linux-guest.sh; svm and xen boot Debian's kernels in QEMU from a busybox initramfs
# (ci/svm/assets.sh, ci/svm/run.sh, ci/xen/assets.sh, ci/xen/run.sh).
# Columns: the stages, what to look for (a command, a file, or "busybox"), the package, why.
requirements() {
    cat <<'TABLE'
host linux svm xen | cc | gcc | guests/build.rs compiles and links the minimal guest kernel with cc
host linux svm xen | ld | binutils | cc links the guest kernel with GNU ld
host xen | /usr/lib/x86_64-linux-gnu/libxenctrl.so | libxen-dev | the Xen backend (--features vmkit/xen) links Xen 4.17's libraries
host linux svm | ip | iproute2 | the network tests make namespaces, bridges and veth pairs (linux: boot_linux's signal test checks its bridge; svm copies ip into its L1)
host | setpriv | util-linux | ci/unprivileged.sh runs the examples as an ordinary user without capabilities
host | useradd | passwd | ci/unprivileged.sh creates its user and the group kvm (useradd, groupadd, usermod)
host svm | nft | nftables | the NAT network tests write nftables rules (svm copies nft into its L1)
linux svm xen | apt-get | apt | Debian's kernel (and Xen) packages are fetched with apt-get download
linux svm xen | dpkg-deb | dpkg | the fetched packages are unpacked with dpkg-deb, not installed
linux svm xen | python3 | python3 | vmlinux is extracted from Debian's bzImage (ci/svm/extract-vmlinux.py); the harnesses read cargo's output with it
linux svm | lz4 | lz4 | Debian's kernel image is LZ4-compressed and vmlinux is taken out of it
linux svm xen | xz | xz-utils | kernel modules may be xz-compressed
linux svm xen | zstd | zstd | kernel modules may be zstd-compressed
linux svm xen | cpio | cpio | the guests' initramfs is a cpio archive
linux svm xen | readelf | binutils | busybox and vmlinux are checked with readelf (static, PVH note)
linux svm xen | busybox | busybox-static | the initramfs runs a statically linked /bin/busybox (the package busybox is dynamic)
svm xen | qemu-system-x86_64 | qemu-system-x86 | the harnesses run a hardware-virtualization KVM and Xen in QEMU's emulator
svm | /usr/lib/x86_64-linux-gnu/libc.a | libc6-dev | ci/svm/netbench.rs is linked statically for the initramfs
TABLE
}

present() {
    case $1 in
        busybox) busybox_is_static ;;
        /*) [ -e "$1" ] ;;
        *) command -v "$1" >/dev/null ;;
    esac
}

missing=() packages=()
while IFS='|' read -r needed_by what package why; do
    read -ra needed_by <<<"$needed_by"
    what=$(xargs <<<"$what") package=$(xargs <<<"$package") why=${why# }
    chosen=()
    for stage in "${needed_by[@]}"; do
        [[ " ${stages[*]} " == *" $stage "* ]] && chosen+=("$stage")
    done
    [ ${#chosen[@]} -gt 0 ] && ! present "$what" || continue
    missing+=("$what (package $package), for $(IFS=,; echo "${chosen[*]}" | sed 's/,/, /g'): $why")
    [[ " ${packages[*]} " == *" $package "* ]] || packages+=("$package")
done < <(requirements)
[ ${#missing[@]} -eq 0 ] && exit 0

for line in "${missing[@]}"; do
    echo "ci/install.sh: missing $line" >&2
done
if ! command -v apt-get >/dev/null; then
    echo "ci/install.sh: this system has no apt-get (the packages named are Debian's): install these tools yourself" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ci/install.sh: installing needs root: sudo apt-get install ${packages[*]}" >&2
    exit 1
fi
echo "ci/install.sh: installing ${packages[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${packages[@]}"
