#!/usr/bin/env bash
# Runs vmkit's whole test suite: unit, integration (on the real /dev/kvm), doc and
# guest-kernel tests on this host; Debian's kernel loaded and entered through vmkit::linux on
# this host; then, in QEMU, the same tests and full Linux boots on a hardware-virtualization
# KVM (ci/svm/run.sh), and the Xen backend on real Xen 4.17 (ci/xen/run.sh). Installs what the
# chosen parts need and a fresh Debian machine lacks (ci/install.sh: a C toolchain for the
# guest kernel, QEMU, busybox...; the parts download Debian's kernel and Xen packages without
# installing them).
#
#   ci/test.sh [host|linux|svm|xen]...     (default: all of them, in that order)
set -euo pipefail
cd "$(dirname "$0")/.."

parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(host linux svm xen)
ci/install.sh "${parts[@]}"

if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
    echo "ci/test.sh: /dev/kvm is missing or not read-writable for $(id -un);" \
         "the integration tests run guests on the real hypervisor" >&2
    exit 1
fi

# Everything on this host, with the Xen backend compiled in (its tests that need no Xen run
# here: bindings layout, the ioreq state machine; the rest say Xen is missing and skip).
# VMKIT_NET_TESTS=require: the TAP and network-mode tests must run, not skip. First the
# examples and the persistent-TAP path as an ordinary user without capabilities
# (ci/unprivileged.sh: it creates that user, vmkit-ci, and gives it /dev/kvm).
host() {
    ci/unprivileged.sh
    VMKIT_NET_TESTS=require VMKIT_UNPRIVILEGED_USER=vmkit-ci \
        cargo test --workspace --all-targets --locked --features vmkit/xen
    cargo test --workspace --doc --locked
}

# Debian's cloud kernel on this host's software KVM: loaded, entered, its banner and ACPI
# tables read. It cannot boot further here (README, "Hosts"); ci/svm boots it fully. The
# kernel comes from ci/linux-guest.sh, the README's command for getting one. Then boot_linux
# given bad input (refused, by flag and limit), and on that kernel under SIGINT, SIGKILL and
# SIGTERM (its network torn down).
linux() {
    local guest
    guest=$(ci/linux-guest.sh | tail -n 1)
    VMKIT_LINUX_KERNEL=$guest/vmlinux cargo test --locked --test linux_boot -- --ignored
    ci/boot-linux-refusals.sh "$guest"
    ci/boot-linux-signals.sh "$guest"
}

# The boot benchmark runs on L1's wall clock. VMKIT_SVM_BENCH_ICOUNT=1 runs it in a second
# L1 whose clock counts instructions, so its numbers repeat on a busy machine; not the
# default: one such run stalled in its first timed boot (undiagnosed).
# The network benchmark times all four datapaths (vmkit and QEMU, each in userspace and on
# the kernel's vhost-net) every run: VMKIT_SVM_NET_VHOST=0 leaves out the two vhost ones.
svm() {
    # One L1 run holds every test; CI runs this stage beside others, so it gets more than
    # run.sh's default 900 s (a hang is still caught: by the per-test limit and the heartbeat).
    VMKIT_SVM_NET_VHOST=${VMKIT_SVM_NET_VHOST:-1} VMKIT_SVM_QEMU_TIMEOUT=${VMKIT_SVM_QEMU_TIMEOUT:-1800} \
        ci/svm/run.sh
}

xen() {
    ci/xen/run.sh
}

for part in "${parts[@]}"; do
    case $part in
        host | linux | svm | xen) "$part" ;;
        *)
            echo "ci/test.sh: unknown part $part (host, linux, svm or xen)" >&2
            exit 2
            ;;
    esac
done
