#!/usr/bin/env bash
# Checks that the crate graph points one way (README, "Crates"): no device, bus, PCI,
# virtio, net, snapshot, boot or machine crate pulls a hypervisor backend (kvm-ioctls, kvm-bindings, or
# vmkit with its `kvm` or `xen` feature), and vmkit itself pulls no guest-OS code
# (linux-loader, acpi_tables). Prints the offending path and exits 1 on a violation.
#
#   ci/check-layers.sh
set -euo pipefail
cd "$(dirname "$0")/.."

failed=0
tree() {
    cargo tree --locked -p "$1" -e normal,build --prefix none -f '{p} [{f}]' "${@:2}"
}

# `cargo tree -p` resolves features for that package alone, as a VMM depending on it would.
for crate in vmkit-bus vmkit-devices vmkit-virtio vmkit-net vmkit-snapshot vmkit-boot vmkit-machine vmkit-seccomp vmkit-pci; do
    deps=$(tree "$crate" --all-features)
    backend=$(grep -E '^(kvm-ioctls|kvm-bindings) |^vmkit v[^ ]+ \([^)]*\) \[[^]]*\b(kvm|xen)\b' <<<"$deps" || true)
    if [ -n "$backend" ]; then
        echo "check-layers: $crate pulls a hypervisor backend:" >&2
        echo "$backend" >&2
        cargo tree --locked -p "$crate" --all-features -e normal -i kvm-ioctls >&2 || true
        failed=1
    else
        echo "check-layers: $crate: no backend"
    fi
done

for feature in kvm xen; do
    deps=$(tree vmkit --no-default-features --features "$feature")
    guest_os=$(grep -E '^(linux-loader|acpi_tables) ' <<<"$deps" || true)
    if [ -n "$guest_os" ]; then
        echo "check-layers: vmkit (feature $feature) pulls guest-OS code:" >&2
        echo "$guest_os" >&2
        failed=1
    else
        echo "check-layers: vmkit (feature $feature): no guest-OS code"
    fi
done
exit "$failed"
