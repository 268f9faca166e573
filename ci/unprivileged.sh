#!/usr/bin/env bash
# Runs vmkit as an ordinary user without capabilities, as the README's Prerequisites say a
# user may: the minimal kernel and a virtio-blk guest (examples/boot) as the user vmkit-ci,
# given /dev/kvm the way distributions give it; and the unprivileged TAP path (a persistent
# TAP that root makes with vmkit-net for that user, which the user's process opens by name).
# Needs root: it creates the user and sets the devices' permissions.
#
#   ci/unprivileged.sh          (ci/test.sh host runs it)
#
# What it changes on the host, and leaves (root's stages do not notice: root bypasses file
# permissions): the system user vmkit-ci; the group kvm, if missing; /dev/kvm to root:kvm
# 0660 and /dev/net/tun to 0666, the modes Debian's udev rules give them. A group rather
# than a POSIX ACL: it is what distributions do and the README tells users to join, and
# setfacl (package acl) is not part of a minimal Debian.
set -euo pipefail
cd "$(dirname "$0")/.."

user=vmkit-ci
if [ "$(id -u)" -ne 0 ]; then
    echo "ci/unprivileged.sh: needs root (it creates the user $user and sets /dev/kvm's group)" >&2
    exit 1
fi

id -u "$user" >/dev/null 2>&1 ||
    useradd --system --no-create-home --shell /usr/sbin/nologin "$user"
getent group kvm >/dev/null || groupadd --system kvm
chgrp kvm /dev/kvm
chmod 0660 /dev/kvm
usermod -a -G kvm "$user"
chmod 0666 /dev/net/tun
gid=$(id -g "$user")

# The binaries are copied into a directory of their own: the user may not reach the target
# directory (a checkout under /root, or a CARGO_TARGET_DIR elsewhere), and a fresh copy
# carries no file capabilities.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work"
cargo build --release --locked --example boot
cp target/release/examples/boot "$work/boot"

# Runs "$@" as the user, with its groups (kvm among them), no new privileges, from $work.
# The shell that becomes the command first checks that it holds no capability (setuid from
# root to another user clears them; no-new-privs keeps exec from granting any).
as_user() {
    (cd "$work" && setpriv --reuid="$user" --regid="$gid" --init-groups --no-new-privs -- \
        sh -c 'for set in CapPrm CapEff CapAmb; do
                   v=$(sed -n "s/^$set:[[:space:]]*//p" /proc/self/status)
                   [ "$v" = 0000000000000000 ] || { echo "as_user: $set is $v" >&2; exit 1; }
               done
               echo "as_user: uid $(id -u), groups $(id -G), CapPrm CapEff CapAmb 0" >&2
               exec "$@"' sh "$@")
}

out=$(as_user ./boot)
echo "$out"
grep -qx "hello from the vmkit minimal kernel" <<<"$out"

disk=$work/disk.img
truncate -s 1M "$disk"
chown "$user:$gid" "$disk"
chmod 0600 "$disk"
out=$(as_user ./boot --disk "$disk")
echo "$out"
grep -qx "virtio-blk: ok" <<<"$out"
# The guest wrote byte i = (31 i + 7) mod 256 to sectors 8-15.
i=0
for b in $(od -An -v -tu1 -j 4096 -N 4096 "$disk"); do
    if [ "$b" -ne $(((31 * i + 7) % 256)) ]; then
        echo "ci/unprivileged.sh: disk byte $((4096 + i)) is $b" >&2
        exit 1
    fi
    i=$((i + 1))
done
[ "$i" -eq 4096 ]

# The persistent TAP, through the library: root makes it for the user on an isolated
# network, the user's process (no capabilities) opens it and sends a frame across the bridge,
# root removes it and the network.
VMKIT_NET_TESTS=require VMKIT_UNPRIVILEGED_USER=$user \
    cargo test --locked -p vmkit-net --test unprivileged_tap

# The same through the operator's command, vmkit-tap, in a namespace of its own.
cargo build --locked -p vmkit-net --bin vmkit-tap
ns=vmkit-unpriv-$$
ip netns add "$ns"
trap 'ip netns del "$ns" 2>/dev/null; rm -rf "$work"' EXIT
tap=(ip netns exec "$ns" target/debug/vmkit-tap)
"${tap[@]}" create vmkci0 --user "$(id -u "$user")" --net isolated:vmkcibr0
info=$(ip -n "$ns" -d link show vmkci0)
echo "$info"
grep -q "tap .*vnet_hdr .*persist on user $user" <<<"$info"
grep -q "master vmkcibr0" <<<"$info"
"${tap[@]}" remove vmkci0 --net isolated:vmkcibr0
if ip -n "$ns" link show vmkci0 2>/dev/null || ip -n "$ns" link show vmkcibr0 2>/dev/null; then
    echo "ci/unprivileged.sh: vmkit-tap remove left the TAP or its bridge" >&2
    exit 1
fi
echo "ci/unprivileged.sh: ok"
