#!/usr/bin/env bash
# The hardware-virtualization harness: runs vmkit's tests and benchmarks (Linux boot, dirty-log
# harvest) on a KVM that uses (emulated) AMD SVM. QEMU's TCG emulator with SVM boots Debian's
# kernel as L1 from an initramfs holding the test binaries; L1 loads kvm-amd, so its /dev/kvm
# is a real hardware-virtualization KVM whose guests (L2) run at TCG speed. See ci/svm/l1-init
# for what runs inside and ci/svm/l1-tests.sh for the tests.
#
#   ci/svm/run.sh
#
# Environment:
#   VMKIT_SVM_ONLY=a,b         run only these tests (names in ci/svm/l1-tests.sh)
#   VMKIT_SVM_QEMU_TIMEOUT=s   wall-clock limit of each L1 run (default 900)
#   VMKIT_SVM_TIMEOUT=s        limit of each test inside L1 (default 600)
#   VMKIT_SVM_FREEZE_SECS=s    L1 silent on its heartbeat port this long is frozen: it is
#                              stopped and its unreported tests re-run once (default 90)
#   VMKIT_BENCH_ROUNDS=n       benchmark rounds (default 7; 3 with VMKIT_SVM_BENCH_ICOUNT=1,
#                              where every round gives the same times)
#   VMKIT_SVM_CPU=model        L1's CPU (default max: SVM, NPT, and XSAVE for L1's KVM)
#   VMKIT_SVM_NET_VMM=qemu     run the network mode tests' guests under QEMU microvm, the
#                              modes set up by the test script, instead of under vmkit's
#                              boot_linux: tells an L1/L2 problem from one of vmkit's
#   VMKIT_SVM_NET_VHOST=1      the network benchmark also times QEMU with vhost-net and
#                              boot_linux with its card on vhost-net (--net MODE,vhost)
#   VMKIT_SVM_NET_ROUNDS=n     the network benchmark's rounds (default 3; each round boots
#                              one guest per datapath, ~20-40 s each)
#   VMKIT_SVM_DENSITY_GUESTS=n the density benchmark's most guests per VMM (default 3; each
#                              costs ~10-30 s of L1's one CPU)
#   VMKIT_SVM_BENCH_ICOUNT=1   run the benchmark in a second L1 whose clock counts executed
#                              instructions (-icount shift=0,sleep=off: 1 ns each, idle time
#                              skipped) instead of following the host's: its times do not
#                              depend on the host's load (identical from round to round), at
#                              the price of ~2x the wall time per boot. Only the benchmark:
#                              the tests do not all run well that way (SMP L2 guests crawl).
# Prints the phase durations and a closing "N passed, M failed"; exits non-zero if a test
# failed, a marker is missing, or QEMU timed out.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=common.sh
. "$here/common.sh"
cd "$root"

phase_start=$SECONDS
phases=()
phase_done() {
    phases+=("$1 $((SECONDS - phase_start)) s")
    log "phase $1 took $((SECONDS - phase_start)) s"
    phase_start=$SECONDS
}

need qemu-system-x86_64:qemu-system-x86 python3:python3 cpio:cpio ldd:libc-bin \
    strip:binutils timeout:coreutils ip:iproute2 nft:nftables
command -v cargo >/dev/null || { log "cargo is missing"; exit 1; }

# The tests to run, in l1-tests.sh's order; a name that matches nothing would silently run
# nothing, so it is refused up front.
known=$(sed -n 's/^TESTS="\(.*\)"$/\1/p' "$here/l1-tests.sh")
[ -n "$known" ] || { log "no TESTS= line in $here/l1-tests.sh"; exit 1; }
if [ -n "${VMKIT_SVM_ONLY:-}" ]; then
    for name in ${VMKIT_SVM_ONLY//,/ }; do
        [[ " $known " == *" $name "* ]] || { log "VMKIT_SVM_ONLY: no test $name (known: $known)"; exit 1; }
    done
fi
selected=()
for name in $known; do
    [[ ",${VMKIT_SVM_ONLY:-$name}," == *",$name,"* ]] && selected+=("$name")
done
[[ ${VMKIT_SVM_NET_VMM:-boot_linux} =~ ^(boot_linux|qemu)$ ]] ||
    { log "VMKIT_SVM_NET_VMM=$VMKIT_SVM_NET_VMM: boot_linux or qemu"; exit 1; }
for var in VMKIT_SVM_TIMEOUT VMKIT_BENCH_ROUNDS VMKIT_SVM_DENSITY_GUESTS; do
    [[ ${!var:-0} =~ ^[0-9]+$ ]] || { log "$var=${!var}: not a number"; exit 1; }
done

# --- assets
assets=$("$here/assets.sh" | tail -n 1)
phase_done assets

# --- build
# executables JSON: the paths of the executables in cargo's --message-format=json output.
executables() {
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
        print(msg["target"]["name"], msg["executable"])
'
}
declare -A bins=()
build() {
    local what=$1 out
    shift
    log "cargo $*"
    if out=$(cargo "$@" --locked --message-format=json); then
        while read -r name path; do
            bins[$name]=$path
        done < <(executables <<<"$out")
    else
        log "$what did not build; its tests will report FAILED"
    fi
}
if [ -f examples/boot_linux.rs ]; then
    build boot_linux build --release --example boot_linux
else
    log "examples/boot_linux.rs does not exist yet: the boot_linux tests will report FAILED"
fi
build "the test binaries" test --release --no-run --test conformance --test kvm
if grep -q "^name = \"linux_boot\"" Cargo.toml; then
    # cargo bench builds with the bench profile, which inherits release.
    build "the linux_boot bench" bench --no-run --bench linux_boot
else
    log "Cargo.toml has no linux_boot bench entry: the benchmark will report FAILED"
fi
build "the dirty_harvest bench" bench --no-run --bench dirty_harvest
phase_done build

# --- L1 initramfs
stage=$assets/l1-root
rm -rf "$stage"
mkdir -p "$stage"/{bin,dev,proc,sys,tmp,modules,harness,vmkit/bin,qemu/bin,qemu/share,l2,lib64}
busybox_tree /bin/busybox "$stage"
cp "$here/l1-init" "$stage/init"
cp "$here/l1-tests.sh" "$stage/harness/tests.sh"
cp "$assets/l1/modules"/* "$stage/modules/"
cp "$assets/l2/vmlinux" "$assets/l2/bzImage" "$assets/l2/initrd.cpio.gz" \
    "$assets/l2/initrd-net.cpio.gz" "$assets/l2/initrd-balloon.cpio.gz" "$stage/l2/"
cp "$assets/pattern.bin" "$stage/pattern.bin"

# add_libs BINARY: the shared libraries BINARY needs, at the paths the loader will look.
add_libs() {
    local lib
    for lib in $(ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
        if [ ! -e "$stage$lib" ]; then
            mkdir -p "$stage$(dirname "$lib")"
            cp -L "$lib" "$stage$lib"
        fi
    done
}
for name in conformance kvm boot_linux linux_boot dirty_harvest; do
    [ -n "${bins[$name]:-}" ] || continue
    # Line tables are not needed inside L1 and would double the initramfs.
    strip --strip-debug -o "$stage/vmkit/bin/$name" "${bins[$name]}"
    add_libs "$stage/vmkit/bin/$name"
done
# The network tests: iproute2's ip as /usr/sbin/ip (busybox's has no netns, veth or bridge
# commands, and busybox sh runs its own applets before anything on PATH, so the tests call
# it by path), nft for the rule sets (vmkit-net runs `nft` from PATH), and netbench (static,
# built by assets.sh).
mkdir -p "$stage/usr/sbin"
ip_bin=$(command -v ip)
cp "$ip_bin" "$stage/usr/sbin/ip"
add_libs "$ip_bin"
nft_bin=$(command -v nft)
cp "$nft_bin" "$stage/bin/nft"
add_libs "$nft_bin"
cp "$assets/netbench" "$stage/bin/netbench"
qemu=$(command -v qemu-system-x86_64)
cp "$qemu" "$stage/qemu/bin/"
add_libs "$qemu"
# microvm's firmware is qboot (bios-microvm.bin); the option ROMs for -kernel come along in
# case x-option-roms is turned back on.
for fw in bios-microvm.bin pvh.bin linuxboot_dma.bin; do
    cp -L "/usr/share/qemu/$fw" "$stage/qemu/share/$fw"
done
l1_cpio=$assets/L1.cpio
cpio_dir "$stage" >"$l1_cpio"
log "L1 initramfs: $(du -m "$l1_cpio" | cut -f1) MiB"
phase_done initramfs

# --- QEMU
# The L1 runs: normally one for everything; with VMKIT_SVM_BENCH_ICOUNT=1 the benchmark gets
# its own, with an instruction-counting clock.
main_tests=() bench_tests=()
for name in "${selected[@]}"; do
    if [ "${VMKIT_SVM_BENCH_ICOUNT:-0}" = 1 ] && [ "$name" = linux_boot_bench ]; then
        bench_tests+=("$name")
    else
        main_tests+=("$name")
    fi
done

passed=0 failed=0
problems=() notes=() consoles=()
# L1 freezes now and then under QEMU 7.2's emulated SVM: halted with interrupts on and its
# timer's vector pending in the LAPIC, never taken (see the kvm-amd note in l1-init). It writes
# a heartbeat to its second serial port every 5 s; when none comes for this long, L1 is
# stopped and the tests it had not reported run once more in a fresh L1.
L1_FREEZE_SECS=${VMKIT_SVM_FREEZE_SECS:-90}
# run_l1 NAME TESTS ACCEL...: boots L1 with the ACCEL options to run the comma-separated
# TESTS, tees its console to $assets/l1-NAME.log and adds its markers to the counts. NAME
# ending in -rerun marks the one re-run after a freeze.
run_l1() {
    local name=$1 tests=$2 status planned p f
    shift 2
    # no_timer_check: on a loaded host, TCG's PIT ticks too irregularly for the kernel's
    # IO-APIC timer check, which then panics ("IO-APIC + timer doesn't work!") before L1 runs
    # anything; the check is for broken chipsets, not for QEMU's.
    local append="console=ttyS0 panic=-1 quiet loglevel=4 no_timer_check VMKIT_SVM_ONLY=$tests"
    [ -n "${VMKIT_SVM_TIMEOUT:-}" ] && append+=" VMKIT_SVM_TIMEOUT=$VMKIT_SVM_TIMEOUT"
    [ -n "${VMKIT_BENCH_ROUNDS:-}" ] && append+=" VMKIT_BENCH_ROUNDS=$VMKIT_BENCH_ROUNDS"
    [ -n "${VMKIT_SVM_NET_VMM:-}" ] && append+=" VMKIT_SVM_NET_VMM=$VMKIT_SVM_NET_VMM"
    [ -n "${VMKIT_SVM_NET_VHOST:-}" ] && append+=" VMKIT_SVM_NET_VHOST=$VMKIT_SVM_NET_VHOST"
    [ -n "${VMKIT_SVM_NET_ROUNDS:-}" ] && append+=" VMKIT_SVM_NET_ROUNDS=$VMKIT_SVM_NET_ROUNDS"
    [ -n "${VMKIT_SVM_DENSITY_GUESTS:-}" ] && append+=" VMKIT_SVM_DENSITY_GUESTS=$VMKIT_SVM_DENSITY_GUESTS"
    local console=$assets/l1-$name.log
    consoles+=("$console.clean")
    # Everything in L1 runs at TCG speed on a host CPU that others may share: the load says
    # how much the timings are worth.
    log "booting L1 for $tests (console in $console); host load: $(cut -d' ' -f1-3 /proc/loadavg)"
    local beat=$assets/l1-$name.heartbeat
    : >"$beat"
    rm -f "$console.status"
    set +e
    # -nic none: no NIC, so SeaBIOS does not run iPXE's option ROM. The console is the first
    # serial port (with the monitor, as -nographic has it), the heartbeat the second.
    {
        timeout -k 10 "${VMKIT_SVM_QEMU_TIMEOUT:-900}" qemu-system-x86_64 "$@" \
            -cpu "${VMKIT_SVM_CPU:-max}" -smp 1 -m 4096 -nic none -nographic -no-reboot \
            -serial mon:stdio -serial "file:$beat" \
            -kernel "$assets/l1/vmlinuz" -initrd "$l1_cpio" -append "$append" </dev/null
        echo $? >"$console.status"
    } 2>&1 | tee "$console" &
    local l1_job=$! quiet=0 last=0 size froze=0
    while kill -0 "$l1_job" 2>/dev/null; do
        sleep 5
        size=$(stat -c %s "$beat")
        # No heartbeat before the first one: L1 may still be booting (or lack ttyS1).
        if [ "$size" -gt 0 ] && [ "$size" -eq "$last" ]; then
            quiet=$((quiet + 5))
        else
            quiet=0
        fi
        last=$size
        if [ "$quiet" -ge "$L1_FREEZE_SECS" ]; then
            froze=1
            log "no heartbeat from L1 for $quiet s: it froze; stopping it"
            pkill -KILL -f -- "file:$beat"
            break
        fi
    done
    wait "$l1_job"
    status=$(cat "$console.status" 2>/dev/null || echo 1)
    set -e
    log "L1 is done; host load: $(cut -d' ' -f1-3 /proc/loadavg)"

    tr -d '\r' <"$console" >"$console.clean"
    planned=$(sed -n 's/^VMKIT-TESTS-BEGIN \([0-9]*\)$/\1/p' "$console.clean" | tail -n 1)
    p=$(grep -cE '^VMKIT-TEST [^ ]+ ok( |$)' "$console.clean" || true)
    f=$(grep -cE '^VMKIT-TEST [^ ]+ FAILED( |$)' "$console.clean" || true)
    if [ "$froze" = 1 ] && [[ $name != *-rerun ]]; then
        local current remaining=() t
        current=$(sed -n 's/^=== \([^ ]*\)$/\1/p' "$console.clean" | tail -n 1)
        for t in ${tests//,/ }; do
            grep -qE "^VMKIT-TEST $t (ok|FAILED)" "$console.clean" || remaining+=("$t")
        done
        passed=$((passed + p))
        failed=$((failed + f))
        if [ ${#remaining[@]} -eq 0 ]; then
            notes+=("$name: L1 froze after its last test (no heartbeat for $L1_FREEZE_SECS s)")
            return
        fi
        notes+=("$name: L1 froze during ${current:-its boot} (no heartbeat for $L1_FREEZE_SECS s); re-ran $(join "${remaining[@]}") in a fresh L1")
        run_l1 "$name-rerun" "$(join "${remaining[@]}")" "$@"
        return
    fi
    [ "$froze" = 1 ] && problems+=("$name: L1 froze again (no heartbeat for $L1_FREEZE_SECS s)")
    case $status in
        0) ;;
        124 | 137) problems+=("$name: QEMU timed out after ${VMKIT_SVM_QEMU_TIMEOUT:-900} s") ;;
        *) problems+=("$name: QEMU exited with status $status") ;;
    esac
    [ "$froze" = 1 ] || [ -n "$planned" ] || problems+=("$name: no VMKIT-TESTS-BEGIN marker: L1 did not get to its tests")
    grep -qx 'VMKIT-TESTS-END' "$console.clean" || problems+=("$name: no VMKIT-TESTS-END marker")
    # Tests that never reported (a crash, a timeout) count as failed.
    local want
    want=$(tr ',' ' ' <<<"$tests" | wc -w)
    if [ $((p + f)) -ne "$want" ]; then
        problems+=("$name: $want tests planned, $((p + f)) reported")
        f=$((want - p))
    fi
    passed=$((passed + p))
    failed=$((failed + f))
}
join() {
    local IFS=,
    echo "$*"
}
if [ ${#main_tests[@]} -gt 0 ]; then
    run_l1 console "$(join "${main_tests[@]}")" -accel tcg,thread=multi
fi
if [ ${#bench_tests[@]} -gt 0 ]; then
    VMKIT_BENCH_ROUNDS=${VMKIT_BENCH_ROUNDS:-3} run_l1 bench-icount "$(join "${bench_tests[@]}")" \
        -accel tcg,thread=single -icount shift=0,sleep=off
fi
phase_done qemu

# --- verdict
echo
echo "=== SVM harness"
printf '  %s\n' "${phases[@]}"
cat "${consoles[@]}" | grep -E '^VMKIT-TEST ' | sed 's/^/  /' || true
cat "${consoles[@]}" | grep -E '^\| linux_boot: (median|ratio|FAILED)' | sed 's/^| /  /' || true
cat "${consoles[@]}" | grep -E '^\| net-bench: ' | sed 's/^| /  /' || true
cat "${consoles[@]}" | grep -E '^\| (balloon|density): ' | sed 's/^| /  /' || true
for n in "${notes[@]}"; do
    echo "  note: $n"
done
for p in "${problems[@]}"; do
    echo "  problem: $p"
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ ${#problems[@]} -eq 0 ]
