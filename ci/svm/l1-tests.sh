# shellcheck shell=sh
# The tests that ci/svm/l1-init runs inside L1 (sourced there as /harness/tests.sh; busybox
# sh). A test is a function t_NAME that prints what it did and returns 0 on pass; it is run
# if NAME is in TESTS (in that order) and selected by VMKIT_SVM_ONLY. To add one: write the
# function, add NAME to TESTS, and ship what it needs into the L1 initramfs in run.sh.
# Helpers from l1-init: bounded SECS CMD... (SIGKILL timeout), now_ms, $TEST_TIMEOUT.
#
# What L1 holds: /vmkit/bin/{conformance,kvm,boot_linux,linux_boot} (each only if it built),
# /qemu/bin/qemu-system-x86_64 with its firmware in /qemu/share, /l2/{vmlinux,bzImage,
# initrd.cpio.gz} and /pattern.bin (see ci/svm/l2-init).

# shellcheck disable=SC2034 # read by l1-init
TESTS="conformance kvm qemu_microvm boot_linux_vmlinux boot_linux_vmlinux_smp2 boot_linux_bzimage linux_boot_bench"

# The L2 kernel command line every boot uses: reboot=k makes `reboot -f` an i8042 reset.
L2_CMDLINE="console=ttyS0 quiet reboot=k panic=-1"

# Runs a test binary if the host managed to build it.
vmkit_bin() {
    bin=/vmkit/bin/$1
    shift
    if [ ! -x "$bin" ]; then
        echo "$bin: not built (see the host's build log)"
        return 1
    fi
    bounded "$TEST_TIMEOUT" "$bin" "$@"
}

# (a) The conformance suite over &dyn Hypervisor; it ends with "N passed, M failed, K skipped".
# Skipped here, by name: on kvm-amd under QEMU's emulated SVM the guest's hardware
# breakpoint never fires (the guest runs on to its HLT); the scenario passes on the host's
# KVM. Not yet diagnosed whether QEMU's SVM or KVM is at fault.
t_conformance() {
    export VMKIT_CONFORMANCE_SKIP="exits::hardware_breakpoint_stops_before_the_instruction=the breakpoint never fires on kvm-amd under QEMU's emulated SVM (undiagnosed, passes on the host KVM)"
    vmkit_bin conformance
    status=$?
    unset VMKIT_CONFORMANCE_SKIP
    return $status
}

# (b) The KVM integration tests, one at a time: L1 has one CPU.
t_kvm() {
    vmkit_bin kvm --test-threads=1
}

# check_l2 CONSOLE CPUS DISK: the verdict lines of ci/svm/l2-init in CONSOLE (a file of the
# guest's console), and the pattern at 1 MiB of DISK, as the host side of the disk test.
check_l2() {
    tr -d '\r' <"$1" >"$1.clean"
    bad=0
    for want in VMKIT-L2-USERSPACE VMKIT-L2-DISK-OK "VMKIT-L2-CPUS $2"; do
        if ! grep -qx "$want" "$1.clean"; then
            echo "check: the guest did not print \"$want\""
            bad=1
        fi
    done
    if dd if="$3" bs=4096 skip=256 count=1 2>/dev/null | cmp -s - /pattern.bin; then
        echo "check: $3 holds the pattern at 1 MiB"
    else
        echo "check: $3 does not hold the pattern at 1 MiB"
        bad=1
    fi
    return $bad
}

# l2_boot CPUS CMD...: boots L2 with CMD plus a fresh zero-filled 8 MiB disk appended by
# the caller as $disk, shows the console, checks it.
l2_boot() {
    cpus=$1
    shift
    echo "run: $*"
    start=$(now_ms)
    bounded 300 "$@" >/tmp/console 2>&1
    rc=$?
    echo "exit status $rc after $(($(now_ms) - start)) ms; console:"
    cat /tmp/console
    check_l2 /tmp/console "$cpus" "$disk" && [ $rc -eq 0 ]
}

new_disk() {
    disk=/tmp/disk.img
    rm -f "$disk"
    dd if=/dev/zero of="$disk" bs=1M count=8 2>/dev/null
}

# QEMU's microvm on the same kernel, initramfs and disk: proves the L2 assets (and that L1's
# KVM boots Linux), so a boot_linux failure is vmkit's. ACPI (on by default) is how this
# kernel finds virtio-mmio devices: Debian builds it without VIRTIO_MMIO_CMDLINE_DEVICES.
# microvm has no i8042, and reboot=k would spin ~100 s in the kernel's keyboard-controller
# wait loop (an exit per inb): reboot=t resets by triple fault instead.
t_qemu_microvm() {
    new_disk
    l2_boot 2 qemu-system-x86_64 -M microvm,x-option-roms=off,isa-serial=on,rtc=on \
        -enable-kvm -cpu host -smp 2 -m 256 -nodefaults -no-user-config -display none \
        -serial stdio -no-reboot -L /qemu/share -kernel /l2/bzImage \
        -initrd /l2/initrd.cpio.gz -append "console=ttyS0 quiet reboot=t panic=-1" \
        -drive id=d0,file="$disk",format=raw,if=none -device virtio-blk-device,drive=d0
}

# boot_linux KERNEL CPUS: vmkit's boot_linux example on KERNEL with a disk.
boot_linux() {
    if [ ! -x /vmkit/bin/boot_linux ]; then
        echo "/vmkit/bin/boot_linux: not built (examples/boot_linux.rs missing or did not build)"
        return 1
    fi
    new_disk
    l2_boot "$2" boot_linux --kernel "$1" --initrd /l2/initrd.cpio.gz --cmdline "$L2_CMDLINE" \
        --mem 256 --vcpus "$2" --disk "$disk"
}

# (c) PVH entry of the uncompressed vmlinux, one vCPU.
t_boot_linux_vmlinux() {
    boot_linux /l2/vmlinux 1
}

# (d) The same with two vCPUs.
t_boot_linux_vmlinux_smp2() {
    boot_linux /l2/vmlinux 2
}

# (e) The bzImage (Linux boot protocol) instead of the vmlinux.
t_boot_linux_bzimage() {
    boot_linux /l2/bzImage 1
}

# The Linux boot benchmark (benches/linux_boot.rs): vmkit's boot_linux against QEMU microvm,
# time from spawn to VMKIT-L2-USERSPACE. It fails if a boot it was asked for failed.
t_linux_boot_bench() {
    if [ ! -x /vmkit/bin/linux_boot ]; then
        echo "/vmkit/bin/linux_boot: not built"
        return 1
    fi
    if [ -x /vmkit/bin/boot_linux ]; then
        export VMKIT_BENCH_BOOT_LINUX=/vmkit/bin/boot_linux
    else
        echo "boot_linux not built: timing QEMU only"
    fi
    VMKIT_BENCH_QEMU=/qemu/bin/qemu-system-x86_64 VMKIT_BENCH_QEMU_FIRMWARE=/qemu/share \
        VMKIT_BENCH_VMLINUX=/l2/vmlinux VMKIT_BENCH_BZIMAGE=/l2/bzImage \
        VMKIT_BENCH_INITRD=/l2/initrd.cpio.gz VMKIT_BENCH_CMDLINE="$L2_CMDLINE" \
        VMKIT_BENCH_ROUNDS="${VMKIT_BENCH_ROUNDS:-7}" \
        bounded "$TEST_TIMEOUT" /vmkit/bin/linux_boot
}
