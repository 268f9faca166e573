#!/usr/bin/env bash
# Runs vmkit's Xen test binaries on a real Xen 4.17: boots Debian's hypervisor with a Debian
# dom0 inside QEMU's TCG emulator (KVM here cannot run Xen), runs each binary in dom0 from
# an initramfs, and counts the per-binary markers dom0 prints on the serial console.
# Ends with `N passed, M failed` (one count per binary) and exits non-zero on any failure,
# a missing marker or a timeout. See ci/xen/README.md for the knobs.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"
assets=${VMKIT_XEN_ASSETS:-$repo/target/harness/xen}
timeout_s=${VMKIT_XEN_TIMEOUT:-1500}
test_timeout=${VMKIT_XEN_TEST_TIMEOUT:-600}
qemu_mem=${VMKIT_XEN_MEM:-2560}
qemu_smp=${VMKIT_XEN_SMP:-2}
# dom0's root file system is its initramfs, in its memory: the test binaries, two Linux
# initramfs images, the kernel, the guests' disk and the snapshots the tests write.
dom0_mem=${VMKIT_XEN_DOM0_MEM:-768M}
log=${VMKIT_XEN_LOG:-$assets/console.log}

total_start=$SECONDS
phase_start=$SECONDS
phase() { echo "=== xen: $1 took $((SECONDS - phase_start)) s"; phase_start=$SECONDS; }

"$here/assets.sh"
"$here/guest.sh"
phase "assets"

# The binaries to run: parallel arrays. A target that cannot be built is recorded in
# `missing` and counted as failed without stopping the others.
names=() paths=() argv=() wants=()
missing=()
add_bin() { names+=("$1"); paths+=("$2"); argv+=("$3"); wants+=("$4"); }

guest_out=""
# Reads cargo's JSON messages on stdin; prints `exe PATH` for each executable target built
# and `guests DIR` for vmkit-guests' OUT_DIR (where its build.rs writes minimal.elf).
cargo_exes() {
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        if "custom-build" not in m["target"]["kind"]:
            print("exe", m["executable"])
    elif m.get("reason") == "build-script-executed" and "vmkit-guests" in m.get("package_id", ""):
        print("guests", m["out_dir"])
'
}

# Builds one cargo target: $1 name, $2 its arguments in dom0, $3 an extended regexp (no
# '|') that a line of its output must match to pass, then cargo's arguments. On success
# adds its executable, else shows cargo's last words and marks the target missing.
build_target() {
    local name=$1 args=$2 want=$3 out exe g err
    shift 3
    echo "--- cargo $*"
    err=$(mktemp)
    if ! out=$(cargo "$@" --message-format=json-render-diagnostics 2>"$err" | cargo_exes); then
        tail -n 60 "$err"
        rm -f "$err"
        echo "xen: cannot build $name (cargo $*): counted as FAILED"
        missing+=("$name")
        return 0
    fi
    rm -f "$err"
    g=$(awk '$1 == "guests" {print $2}' <<<"$out" | tail -n 1)
    [ -n "$g" ] && guest_out=$g
    exe=$(awk '$1 == "exe" {print $2}' <<<"$out" | tail -n 1)
    if [ -z "$exe" ] || [ ! -x "$exe" ]; then
        echo "xen: cargo built no executable for $name: counted as FAILED"
        missing+=("$name")
        return 0
    fi
    echo "    $exe"
    add_bin "$name" "$exe" "$args" "$want"
}

# The Linux guest's memory (MiB), in the linux tests and the boot benchmark.
linux_mem=256
# boot_linux's arguments in dom0 for a guest of $1 vCPUs (see the linux tests in init.sh).
linux_args() {
    echo "--kernel /xen/vmlinux --initrd /xen/initrd.cpio.gz --cmdline '$linux_cmdline'" \
        "--mem $linux_mem --vcpus $1 --disk /tmp/disk.img --seccomp"
}
# quiet: every byte on the serial port is an exit, ~20 ms each here (Xen's ioreq round
# trip under TCG). pci=off: boot_linux without --pci has no PCI, and Linux's probe of every
# bus for peer bridges would cost ~9700 exits (over 3 minutes). The guest, which detects
# Xen, resets through Xen (boot_linux takes that as the end of the run, as the i8042's).
linux_cmdline=${VMKIT_XEN_LINUX_CMDLINE:-console=ttyS0 quiet reboot=k panic=-1 pci=off}

# linux_net: boot_linux's virtio-net card on a TAP that vmkit-net puts on dom0's bridge
# xnbr0 (bridged mode; init.sh makes the bridge, 10.20.0.1/24, with no uplink, and a netbench
# listener on port 5001 there). The guest (ci/svm/l2-init's network scenario, with the
# network initramfs) takes 10.20.0.2/24, pings dom0 and makes 20 TCP round trips with the
# listener; dom0 checks both ends afterwards (init.sh, net_check). The addresses, MAC and
# port here are the ones init.sh checks.
linux_net_args() {
    echo "--kernel /xen/vmlinux --initrd /xen/initrd-net.cpio.gz" \
        "--cmdline '$linux_cmdline vmkit.net=10.20.0.2/24 vmkit.nettest=ping:10.20.0.1,rtt:10.20.0.1:5001:20'" \
        "--mem $linux_mem --vcpus 1 --disk /tmp/disk.img --seccomp" \
        "--net bridged:xnbr0 --tap vmktap0 --mac 52:54:00:14:00:02"
}

# The arguments and regexp of a linux test of the default list, by name: a VMKIT_XEN_BINS
# entry with that name and no arguments takes them (its command line holds spaces and
# commas, which such an entry cannot carry). Sets d_args and d_want, or returns 1.
linux_defaults() {
    case $1 in
        linux_smp[12]) d_args=$(linux_args "${1#linux_smp}") d_want="^VMKIT-L2-CPUS ${1#linux_smp}" ;;
        linux_net) d_args=$(linux_net_args) d_want="^VMKIT-L2-NET-DONE" ;;
        pv_linux) d_args=$(pv_linux_args) d_want="VMKIT-L2-USERSPACE" ;;
        *) return 1 ;;
    esac
}

# boot_linux_pv's arguments in dom0: the PV guest's console is hvc0.
pv_linux_args() {
    echo "--kernel /xen/vmlinux --initrd /xen/initrd.cpio.gz" \
        "--cmdline '$(sed 's/console=ttyS0/console=hvc0/' <<<"$linux_cmdline")'" \
        "--mem $linux_mem --vcpus 1 --marker VMKIT-L2-USERSPACE --check-xenstore"
}

if [ -n "${VMKIT_XEN_BINS:-}" ]; then
    # name=path[:args], whitespace-separated; commas in args stand for spaces.
    for entry in $VMKIT_XEN_BINS; do
        name=${entry%%=*}
        rest=${entry#*=}
        path=${rest%%:*}
        args=""
        [ "$rest" != "$path" ] && args=${rest#*:}
        args=${args//,/ }
        if [ -z "$name" ] || [ "$name" = "$entry" ] || [[ ! $name =~ ^[A-Za-z0-9._-]+$ ]]; then
            echo "xen: bad VMKIT_XEN_BINS entry '$entry' (want name=path[:args])" >&2
            exit 2
        fi
        if [ ! -x "$path" ]; then
            echo "xen: $name: $path is not an executable: counted as FAILED"
            missing+=("$name")
            continue
        fi
        want=""
        if [ -z "$args" ] && [ "$rest" = "$path" ] && linux_defaults "$name"; then
            args=$d_args want=$d_want
        fi
        add_bin "$name" "$path" "$args" "$want"
    done
else
    last=$assets/last-build.list
    if [ "${VMKIT_XEN_SKIP_BUILD:-0}" = 1 ]; then
        # Reuse what the last build produced (name|path|args|regexp, or name|missing).
        [ -f "$last" ] || echo "xen: VMKIT_XEN_SKIP_BUILD=1 but nothing was built before" >&2
        while IFS='|' read -r name path args want; do
            if [ "$path" = missing ] || [ ! -x "$path" ]; then
                echo "xen: $name was not built: counted as FAILED"
                missing+=("$name")
            else
                add_bin "$name" "$path" "$args" "$want"
            fi
        done < <(cat "$last" 2>/dev/null)
    else
        # Each with what its output must show, so that a run which skipped everything
        # (no Xen backend compiled in, say) does not pass: at least one test passed, at
        # least one conformance scenario passed on Xen, the guest's greeting.
        build_target xen "--test-threads=1 ${VMKIT_XEN_TEST_FILTER:-}" "test result: ok\. [1-9]" \
            test --release --locked --features xen --no-run --test xen
        build_target conformance "" "^conformance xen .* \.\.\. ok" \
            test --release --locked --features xen --no-run --test conformance
        build_target boot "" "^hello from the vmkit minimal kernel$" \
            build --release --locked --features xen --example boot
        # The same with the Xen backend's seccomp filters on its vCPU and main threads.
        build_target boot_seccomp "--seccomp" "^hello from the vmkit minimal kernel$" \
            build --release --locked --features xen --example boot
        build_target xen_boot "${VMKIT_XEN_BENCH_ARGS:---bench}" "" build --release --locked --features xen --bench xen_boot
        # Interrupt latency on Xen (the same benchmark as on KVM), short: a few samples each.
        build_target interrupts "--bench --warm-up-time 1 --measurement-time 2 --sample-size 10" \
            "^inject_to_handler/irqfd +time:" build --release --locked --features xen --bench interrupts
        # Debian's kernel under boot_linux as an HVM domain, 1 and 2 vCPUs: dom0 checks the
        # guest's markers and its disk (init.sh, linux_check); the CPU count is this regexp.
        for cpus in 1 2; do
            build_target "linux_smp$cpus" "$(linux_args "$cpus")" "^VMKIT-L2-CPUS $cpus" \
                build --release --locked --features xen --example boot_linux
        done
        # Its virtio-net card on dom0's bridge: frames both ways (see linux_net_args).
        build_target linux_net "$(linux_net_args)" "^VMKIT-L2-NET-DONE" \
            build --release --locked --features xen --example boot_linux
        # The same kernel and initramfs as a PV domain (boot_linux_pv: libxenguest's builder,
        # the console ring served by vmkit, xenstore nodes in dom0's xenstored); no disk.
        # dom0 checks afterwards that no domain and no xenstore node is left (init.sh).
        build_target pv_linux "$(pv_linux_args)" "VMKIT-L2-USERSPACE" \
            build --release --locked --features xen --example boot_linux_pv
        # The counting guest saved in one process and resumed in another (lazily, then
        # eagerly), on Xen; also the binary of the cross-backend round trip below.
        build_target snapshot_across "" "^snapshot_across: the count went on from 11 to 40 on Xen$" \
            build --release --locked --features xen --example snapshot_across
        # Live migration between two processes over a Unix socket (RAM not dirty-logged on Xen).
        build_target migration "--test-threads=1 migrates_over_a_unix_socket" "test result: ok\. 1 passed" \
            test --release --locked --features xen --no-run --test migration
        {
            for i in "${!names[@]}"; do
                printf '%s|%s|%s|%s\n' "${names[$i]}" "${paths[$i]}" "${argv[$i]}" "${wants[$i]}"
            done
            for n in "${missing[@]}"; do printf '%s|missing\n' "$n"; done
        } >"$last"
    fi
fi
phase "build"

# The minimal PVH kernel that `xl create` boots (and the benchmark times).
minimal=${VMKIT_XEN_MINIMAL_ELF:-}
if [ -z "$minimal" ] && [ -n "$guest_out" ] && [ -f "$guest_out/minimal.elf" ]; then
    minimal=$guest_out/minimal.elf
fi
# Else the newest one a build left (build.rs writes it to vmkit-guests' OUT_DIR).
newest_minimal() {
    find "${CARGO_TARGET_DIR:-$repo/target}" -maxdepth 5 -path '*/build/vmkit-guests-*/out/minimal.elf' \
        -printf '%T@ %p\n' 2>/dev/null | sort -rn | awk 'NR == 1 {print $2}'
}
[ -n "$minimal" ] || minimal=$(newest_minimal)
if [ -z "$minimal" ] && [ "${VMKIT_XEN_SKIP_BUILD:-0}" != 1 ]; then
    cargo build --release --locked -p vmkit-guests >/dev/null 2>&1 || true
    minimal=$(newest_minimal)
fi
xl_check=${VMKIT_XEN_XL_CHECK:-1}
if [ "$xl_check" = 1 ] && [ -z "$minimal" ]; then
    echo "xen: no minimal.elf found (cargo build -p vmkit-guests): xl-create-minimal counted as FAILED"
    missing+=(xl-create-minimal)
    xl_check=0
fi

# The dom0 initramfs: busybox, the Xen tools and their libraries, the modules, the tests.
rootfs=$assets/initramfs
rm -rf "$rootfs"
mkdir -p "$rootfs"/{bin,lib/modules,tests,xen,usr/lib/xen-4.17/bin,usr/sbin,etc/xen}

# Restore across backends (VMKIT_XEN_CROSS=0 turns it off): this host saves the counting
# guest on KVM at count 10 into the initramfs; dom0 resumes it on Xen, saves it again at
# count 20 and sends that back on the console (init.sh's export); after the run this host
# resumes it on KVM to the end. Each step checks that the count goes on (snapshot_across).
cross_bin="" cross=$assets/cross
rm -rf "$cross"
if [ "${VMKIT_XEN_CROSS:-1}" = 1 ]; then
    for i in "${!names[@]}"; do
        [ "${names[$i]}" = snapshot_across ] && cross_bin=${paths[$i]}
    done
    if [ -z "$cross_bin" ]; then
        echo "xen: snapshot_across was not built: the cross-backend round trip is counted as FAILED"
        missing+=(cross-kvm-to-xen cross-xen-to-kvm)
    elif ! "$cross_bin" save "$cross/kvm" >"$assets/cross-save.log" 2>&1; then
        tail -n 20 "$assets/cross-save.log"
        echo "xen: saving on KVM failed (is /dev/kvm usable?): the round trip is counted as FAILED"
        missing+=(cross-kvm-to-xen cross-xen-to-kvm)
        cross_bin=""
    else
        tail -n 1 "$assets/cross-save.log"
        mkdir -p "$rootfs/cross"
        cp -r "$cross/kvm" "$rootfs/cross/kvm"
        add_bin cross-kvm-to-xen "$cross_bin" "resume /cross/kvm --save-at 20 /tmp/export/xen" \
            "^snapshot_across: the count went on from 11 to 20 on Xen$"
    fi
fi
cp /bin/busybox "$rootfs/bin/busybox"
cp "$here/init.sh" "$rootfs/init"
chmod 755 "$rootfs/init"
cp "$assets"/modules/*.ko "$assets/modules/order" "$rootfs/lib/modules/"
cp "$assets/root/etc/xen/xl.conf" "$rootfs/etc/xen/" 2>/dev/null || true

xenlib=$assets/root/usr/lib/x86_64-linux-gnu
# Copies the shared libraries that $1 needs (resolving Xen's from the unpacked packages)
# to the same paths in the initramfs.
copy_libs() {
    local lib deps
    # ldd fails on a static executable: nothing to copy.
    deps=$(LD_LIBRARY_PATH=$xenlib ldd "$1" 2>/dev/null) || return 0
    if grep -q 'not found' <<<"$deps"; then
        echo "xen: $1 needs libraries this host lacks:" >&2
        grep 'not found' <<<"$deps" >&2
        return 1
    fi
    for lib in $(grep -oE '(/[^ ]+)' <<<"$deps"); do
        local dest=$lib
        # Xen's libraries live under $xenlib on the host; in dom0 they go to /usr/lib.
        case $lib in "$xenlib"/*) dest=/usr/lib/x86_64-linux-gnu/${lib#"$xenlib"/} ;; esac
        if [ ! -e "$rootfs$dest" ]; then
            mkdir -p "$(dirname "$rootfs$dest")"
            cp -L "$lib" "$rootfs$dest"
        fi
    done
}

for tool in xl xenstored xen-init-dom0 xenconsoled libxl-save-helper xenstore-read xenstore-ls; do
    src=$assets/root/usr/lib/xen-4.17/bin/$tool
    [ -e "$src" ] || src=$assets/root/usr/bin/$tool
    cp "$src" "$rootfs/usr/lib/xen-4.17/bin/"
    copy_libs "$src"
done

# glibc dlopen()s libgcc_s for pthread_cancel (xl uses it); ldd cannot see that.
gcc_s=$(ldconfig -p | awk '/libgcc_s\.so\.1 .*x86-64/ && !f {print $NF; f = 1}')
[ -n "$gcc_s" ] && copy_libs "$gcc_s" && cp -L "$gcc_s" "$rootfs/lib/x86_64-linux-gnu/"

# VMKIT_XEN_MALLOC_CHECK=1: the test binaries run on glibc's checking malloc (init.sh);
# since glibc 2.34 that lives in libc_malloc_debug, which nothing links.
if [ "${VMKIT_XEN_MALLOC_CHECK:-0}" = 1 ]; then
    mdebug=$(ldconfig -p | awk '/libc_malloc_debug\.so\.0 .*x86-64/ && !f {print $NF; f = 1}')
    if [ -z "$mdebug" ]; then
        echo "xen: VMKIT_XEN_MALLOC_CHECK=1 but this host has no libc_malloc_debug.so.0" >&2
        exit 2
    fi
    cp -L "$mdebug" "$rootfs/lib/x86_64-linux-gnu/libc_malloc_debug.so.0"
    : >"$rootfs/tests/malloc-check"
fi

# Debug info makes the initramfs several times larger; symbols stay for backtraces.
strip_cmd=$(command -v strip || true)
: >"$rootfs/tests/list"
run_names=()
for i in "${!names[@]}"; do
    dest=$rootfs/tests/${names[$i]}
    cp "${paths[$i]}" "$dest"
    if [ -n "$strip_cmd" ]; then "$strip_cmd" --strip-debug "$dest" 2>/dev/null || true; fi
    if ! copy_libs "${paths[$i]}"; then
        echo "xen: ${names[$i]}: libraries missing: counted as FAILED"
        missing+=("${names[$i]}")
        continue
    fi
    printf '%s|%s|%s|%s\n' "${names[$i]}" "$test_timeout" "${wants[$i]}" "${argv[$i]}" >>"$rootfs/tests/list"
    run_names+=("${names[$i]}")
done
echo "${VMKIT_XEN_OUTPUT_LINES:-400}" >"$rootfs/tests/output-lines"
# The kernel and its xl config are there for benchmarks even when the check is off.
if [ -n "$minimal" ]; then
    cp "$minimal" "$rootfs/xen/minimal.elf"
    cp "$here/minimal.cfg" "$rootfs/xen/minimal.cfg"
fi
[ "$xl_check" = 1 ] && : >"$rootfs/tests/xl-check"
# The Linux guest (ci/xen/guest.sh) when a linux test runs: dom0's kernel, the guest's
# initramfs, and the pattern its disk must hold afterwards.
for n in "${run_names[@]}"; do
    case $n in
        linux* | pv_linux*)
            cp "$assets/vmlinux" "$rootfs/xen/vmlinux"
            cp "$assets/guest/initrd.cpio.gz" "$assets/guest/pattern.bin" "$rootfs/xen/"
            break
            ;;
    esac
done
# The network test's initramfs, and netbench (in the guest's initramfs, and dom0's listener).
for n in "${run_names[@]}"; do
    case $n in
        linux_net*)
            cp "$assets/guest/initrd-net.cpio.gz" "$rootfs/xen/"
            cp "$assets/guest/netbench" "$rootfs/bin/netbench"
            break
            ;;
    esac
done
# The boot benchmark (init.sh's linux_bench): boot_linux, the binary of the first linux
# test, against `xl create` of the same kernel and initramfs as a PVH guest, whose console
# is hvc0. vmkit.bench=1 makes the guest reset right after its userspace marker.
bench_rounds=${VMKIT_XEN_LINUX_BENCH_ROUNDS:-2}
if [ "${VMKIT_XEN_LINUX_BENCH:-1}" = 1 ] && [ -f "$rootfs/xen/vmlinux" ]; then
    for n in "${run_names[@]}"; do
        case $n in
            linux*)
                printf '%s|%s|%s|%s|%s|%s\n' "$n" "$bench_rounds" "$test_timeout" "$linux_mem" \
                    "$linux_cmdline vmkit.bench=1" \
                    "$(sed 's/console=ttyS0/console=hvc0/' <<<"$linux_cmdline") vmkit.bench=1" \
                    >"$rootfs/tests/linux-bench"
                break
                ;;
        esac
    done
fi
# Uncompressed: the emulated dom0 unpacks a plain cpio far faster than a gzip one.
(cd "$rootfs" && find . -print0 | cpio --null -o -H newc --quiet) >"$assets/initramfs.cpio"
echo "xen: initramfs $(du -h "$assets/initramfs.cpio" | cut -f1), ${#run_names[@]} binaries"
phase "initramfs"

# Boot. QEMU's multiboot loader takes the hypervisor as -kernel and its modules (dom0's
# kernel, then its initramfs) comma-separated in -initrd.
# Guest-related messages from warnings up (VMKIT_XEN_GUEST_LOGLVL): at `all`, Xen logs every
# record of every HVM save and load, which was 98 % of a default run's console (48,640 of
# 49,368 lines, 2.2 MB through an emulated 115200-baud UART), and in one run the console
# stalled in the middle of such a line until the run's time limit.
xen_cmdline="console=com1 com1=115200,8n1 dom0_mem=$dom0_mem,max:$dom0_mem loglvl=all guest_loglvl=${VMKIT_XEN_GUEST_LOGLVL:-warning} console_timestamps=boot"
dom0_cmdline="console=hvc0 earlyprintk=xen panic=-1 ${VMKIT_XEN_DOM0_ARGS:-quiet}"
# Everything TCG emulates, XSAVE and AVX included, less the features that broke runs under
# QEMU 7.2's TCG (README.md, VMKIT_XEN_CPU, says which and how).
xen_cpu=${VMKIT_XEN_CPU:-max,-smap,-rdtscp,-vgif,-xsaveopt,-xsavec,-xsaves}
dom0_kernel=$assets/vmlinux
[ -f "$dom0_kernel" ] || dom0_kernel=$assets/vmlinuz
mkdir -p "$(dirname "$log")"
echo "xen: booting (timeout ${timeout_s}s), console in $log"
set +e
timeout --foreground -k 10 "$timeout_s" qemu-system-x86_64 \
    -accel tcg,thread=multi -cpu "$xen_cpu" -smp "$qemu_smp" -m "$qemu_mem" \
    -nographic -no-reboot -nodefaults -serial stdio -monitor none \
    -kernel "$assets/xen" -append "$xen_cmdline" \
    -initrd "$dom0_kernel $dom0_cmdline,$assets/initramfs.cpio" \
    </dev/null 2>&1 | tr -d '\r' | tee "$log"
rc=${PIPESTATUS[0]}
set -e
phase "boot and tests"

# The cross-backend round trip's last step: the snapshot dom0 exported (a gzipped tar,
# base64 in VMKIT-EXPORT lines, checked against its SHA-256), resumed here on KVM.
cross_verdict=""
if [ -n "$cross_bin" ]; then
    mkdir -p "$cross/xen"
    want_sum=$(grep -oE '^VMKIT-EXPORT-SHA256 [0-9a-f]{64}' "$log" | awk 'NR == 1 {print $2}' || true)
    grep -E '^VMKIT-EXPORT [A-Za-z0-9+/=]+$' "$log" | cut -d' ' -f2 | base64 -d >"$cross/xen.tgz" 2>/dev/null || true
    got_sum=$(sha256sum "$cross/xen.tgz" | cut -d' ' -f1)
    if [ -z "$want_sum" ]; then
        echo "xen: dom0 exported no snapshot"
        cross_verdict=FAILED
    elif [ "$want_sum" != "$got_sum" ]; then
        echo "xen: the exported snapshot arrived damaged (SHA-256 $got_sum, dom0 sent $want_sum)"
        cross_verdict=FAILED
    elif tar -xzf "$cross/xen.tgz" -C "$cross" && "$cross_bin" resume "$cross/xen" >"$assets/cross-resume.log" 2>&1 &&
        grep -q '^snapshot_across: the count went on from 21 to 40 on KVM$' "$assets/cross-resume.log"; then
        tail -n 1 "$assets/cross-resume.log"
        cross_verdict=ok
    else
        tail -n 20 "$assets/cross-resume.log" 2>/dev/null || true
        cross_verdict=FAILED
    fi
fi

# Count. Markers are matched anywhere in a line: Xen may interleave its own output.
passed=0 failed=0
echo "=== xen: results"
grep -E '^[A-Za-z0-9._-]+\| (.*test result:|[0-9]+ passed, [0-9]+ failed)' "$log" | sed 's/^/  /' || true
declare -A verdict=()
while read -r n v; do verdict[$n]=$v; done < <(grep -oE '^VMKIT-TEST [A-Za-z0-9._-]+ (ok|FAILED)' "$log" | awk '{print $2, $3}')
expected=("${run_names[@]}")
[ "$xl_check" = 1 ] && expected+=(xl-create-minimal)
if [ -f "$rootfs/tests/linux-bench" ]; then
    expected+=(xen-linux-boot)
    grep -E 'xen-linux-boot round|^VMKIT-BENCH ' "$log" | sed 's/^/  /' || true
fi
for n in "${expected[@]}"; do
    case ${verdict[$n]:-} in
        ok) echo "  $n: ok"; passed=$((passed + 1)) ;;
        FAILED) echo "  $n: FAILED"; failed=$((failed + 1)) ;;
        *) echo "  $n: FAILED (no marker: dom0 died, hung or timed out)"; failed=$((failed + 1)) ;;
    esac
done
case $cross_verdict in
    ok) echo "  cross-xen-to-kvm: ok"; passed=$((passed + 1)) ;;
    FAILED) echo "  cross-xen-to-kvm: FAILED"; failed=$((failed + 1)) ;;
esac
for n in "${missing[@]}"; do
    echo "  $n: FAILED (not built or not runnable)"
    failed=$((failed + 1))
done
if [ $((passed + failed)) = 0 ]; then
    echo "xen: nothing ran"
    failed=1
fi
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "xen: QEMU timed out after ${timeout_s}s"
    failed=$((failed + 1))
elif ! grep -q '^VMKIT-DONE$' "$log"; then
    echo "xen: dom0 did not finish its run (QEMU exit status $rc)"
    failed=$((failed + 1))
fi
echo "=== xen: total $((SECONDS - total_start)) s"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
