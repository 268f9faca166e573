#!/bin/busybox sh
# dom0's /init in the Xen harness: brings up the Xen control plane (modules, xenfs,
# xenstored, xenconsoled), prints what Xen offers, runs the test binaries listed in
# /tests/list with a marker line each, then powers the machine off.
# Runs under busybox ash; run.sh copies it into the initramfs.

/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /var
/bin/busybox --install -s
export PATH=/usr/lib/xen-4.17/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb RUST_BACKTRACE=1
# The emulator's limit, not Xen's (see README.md, "Guest debugging"): QEMU's VMRUN does
# not arm the breakpoints of the VMCB's DR7. tests/xen.rs covers the path with a guest that
# rewrites DR7 itself (ignored by default: see README.md).
export VMKIT_CONFORMANCE_SKIP="exits::hardware_breakpoint_stops_before_the_instruction=the breakpoint never fires under QEMU's TCG, whose VMRUN does not arm the VMCB's DR7 (see ci/xen/README.md; an ignored test in tests/xen.rs covers the path by hand)"

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /tmp /run /root
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mkdir -p /var && ln -s /run /var/run
# xl and xenstored keep state, locks and logs here.
mkdir -p /run/xen /run/xenstored /var/lib/xen /var/lib/xenstored /var/log/xen /etc/xen

say() { echo "vmkit-xen: $*"; }
fatal() {
    say "FATAL: $*"
    echo "VMKIT-DONE failed"
    poweroff -f
    sleep 5
    exit 1
}

say "init started $(cut -d' ' -f1 /proc/uptime) s after dom0's kernel, on $(cat /sys/hypervisor/type 2>/dev/null)"
for m in $(cat /lib/modules/order); do
    insmod "/lib/modules/$m.ko" || fatal "insmod $m failed"
done
mount -t xenfs xenfs /proc/xen || fatal "cannot mount xenfs"
[ -c /dev/xen/privcmd ] || fatal "/dev/xen/privcmd is missing"

# The C xenstored; it daemonizes once its socket is ready.
xenstored --pid-file /run/xenstored.pid || fatal "xenstored failed"
xen-init-dom0 >/tmp/init-dom0.log 2>&1 || { cat /tmp/init-dom0.log; fatal "xen-init-dom0 failed"; }
# Guests' consoles go to /var/log/xen/console/guest-NAME.log: the boot benchmark reads
# its xl guest's there.
mkdir -p /var/log/xen/console
xenconsoled --pid-file=/run/xenconsoled.pid --log=guest || fatal "xenconsoled failed"

# What Xen offers, for the CI log.
xl info >/tmp/xl-info 2>&1 || { cat /tmp/xl-info; fatal "xl info failed"; }
grep -E '^(xen_version|virt_caps|free_memory|total_memory|nr_cpus|xen_caps) ' /tmp/xl-info |
    sed 's/^/vmkit-xen: xl info: /'
xl list | sed 's/^/vmkit-xen: xl list: /'
xl list Domain-0 >/dev/null 2>&1 || fatal "xl list does not show Domain-0"
say "dom0 ready $(cut -d' ' -f1 /proc/uptime) s after its kernel started"
echo "VMKIT-READY"

limit=$(cat /tests/output-lines 2>/dev/null || echo 400)
# VMKIT_XEN_MALLOC_CHECK=1 (run.sh): each test binary on glibc's checking malloc, which
# aborts at the first corrupted chunk it meets, and with freed and fresh memory filled
# (MALLOC_PERTURB_), so a use after free reads garbage rather than old data.
malloc_env=""
if [ -f /tests/malloc-check ]; then
    malloc_env="env LD_PRELOAD=/lib/x86_64-linux-gnu/libc_malloc_debug.so.0 MALLOC_CHECK_=3 MALLOC_PERTURB_=165"
    say "test binaries run with $malloc_env"
fi

# Runs one test: $1 name, $2 timeout (s), $3 an extended regexp that some output line
# must match (or empty), $4 its arguments (split on spaces). Output is streamed but
# bounded to $limit lines; libtest's summary lines are always shown.
run_test() {
    name=$1 secs=$2 want=$3 args=$4
    say "=== running $name $args (timeout ${secs}s)"
    start=$(date +%s)
    seen=$(dmesg | wc -l)
    rm -f /tmp/rc
    case $name in linux*) linux_disk ;; esac
    case $name in linux_net*) net_up ;; esac
    # eval: the arguments may quote words with spaces (boot_linux's --cmdline).
    eval "set -- $args"
    { $malloc_env timeout -s KILL "$secs" "/tests/$name" "$@" </dev/null 2>&1; echo $? >/tmp/rc; } |
        tee "/tmp/out.$name" |
        awk -v max="$limit" -v n="$name" '
            NR <= max { print n "| " $0; fflush(); next }
            NR == max + 1 { print n "| ... output truncated"; fflush() }
            /test result:|passed, .* failed/ { print n "| " $0; fflush() }'
    rc=$(cat /tmp/rc 2>/dev/null || echo 255)
    took=$(($(date +%s) - start))
    verdict=ok
    if [ "$rc" != 0 ]; then
        [ "$rc" = 137 ] && say "$name: killed after ${secs}s timeout"
        say "$name: exit status $rc"
        verdict=FAILED
    fi
    if [ -n "$want" ] && ! grep -qE "$want" "/tmp/out.$name"; then
        say "$name: no output line matches '$want'"
        verdict=FAILED
    fi
    case $name in linux*) linux_check "/tmp/out.$name" || verdict=FAILED ;; esac
    case $name in linux_net*) net_check "/tmp/out.$name.clean" || verdict=FAILED ;; esac
    case $name in pv_*) pv_check || verdict=FAILED ;; esac
    if [ "$verdict" = FAILED ]; then
        # dom0's kernel messages (quiet on the console) since the test started often say
        # why a privcmd call failed.
        dmesg | tail -n +$((seen + 1)) | tail -n 20 | sed "s/^/$name dmesg| /"
    fi
    # Leftover domains would skew the next binary's free memory.
    xl list | awk 'NR > 2 {print $2}' | while read -r id; do
        say "$name left domain $id; destroying it"
        xl destroy "$id" </dev/null
    done
    echo "VMKIT-TEST $name $verdict (${took}s)"
}

# The PV tests (boot_linux_pv): the binary must have destroyed its domain and removed its
# xenstore nodes (/local/domain holds only dom0's).
pv_check() {
    left=$(xl list | awk 'NR > 2 {print $2}' | tr '\n' ' ')
    [ -z "$left" ] || { say "pv check: domains left: $left"; return 1; }
    nodes=$(xenstore-ls /local/domain 2>&1 | grep -v '^ ' | grep -v '^0 = ' | tr '\n' ' ')
    [ -z "$nodes" ] || { say "pv check: xenstore nodes left under /local/domain: $nodes"; return 1; }
    say "pv check: no domain and no xenstore node left"
}

# The linux tests (boot_linux on /xen/vmlinux with the guest's init, ci/svm/l2-init): a
# fresh zero-filled 8 MiB /tmp/disk.img before, and afterwards the guest's markers in the
# output $1 and the pattern it wrote at 1 MiB of that disk, checked from dom0.
linux_disk() {
    rm -f /tmp/disk.img
    dd if=/dev/zero of=/tmp/disk.img bs=1M count=8 2>/dev/null
}
linux_check() {
    ok=0
    tr -d '\r' <"$1" >"$1.clean"
    for want in VMKIT-L2-USERSPACE VMKIT-L2-DISK-OK; do
        grep -qx "$want" "$1.clean" || { say "$name: the guest did not print $want"; ok=1; }
    done
    if dd if=/tmp/disk.img bs=4096 skip=256 count=1 2>/dev/null | cmp -s - /xen/pattern.bin; then
        say "$name: the disk holds the guest's pattern at 1 MiB"
    else
        say "$name: the disk does not hold the guest's pattern at 1 MiB"
        ok=1
    fi
    return $ok
}

# The network tests (linux_net: boot_linux --net bridged:xnbr0, see run.sh's
# linux_net_args): before, dom0's bridge xnbr0 (10.20.0.1/24, no uplink: only the guest's
# TAP will be on it) and a netbench listener for one connection on port 5001; afterwards,
# frames both ways: the guest's answers from dom0 (its ping and TCP round trips), the
# listener's peer (the guest's address), dom0's packet counts on the bridge, and boot_linux's
# TAP on the bridge and off it again. The bridge goes at the end.
net_up() {
    # IPv6 off: dom0 sends nothing on xnbr0 of its own (neighbour discovery, MLD), so what it
    # sent there was for the guest.
    { ip link add xnbr0 type bridge && echo 1 >/proc/sys/net/ipv6/conf/xnbr0/disable_ipv6 &&
        ip addr add 10.20.0.1/24 dev xnbr0 && ip link set xnbr0 up; } ||
        say "net: cannot set up xnbr0"
    netbench serve 5001 1 >/tmp/net-serve.log 2>&1 &
    net_serve=$!
}
net_check() {
    ok=0
    for want in '^VMKIT-L2-NET-UP eth0 10\.20\.0\.2/24 mac 52:54:00:14:00:02$' \
        '^VMKIT-L2-NET-RING packed$' '^VMKIT-L2-NET-PING-OK 10\.20\.0\.1 ' '^VMKIT-L2-NET-RTT-OK ' '^VMKIT-L2-NET-DONE$' \
        '^boot_linux: net: tap vmktap0 mac 52:54:00:14:00:02 on xnbr0 \(bridged\)$' \
        '^boot_linux: net: left xnbr0$'; do
        grep -qE "$want" "$1" || { say "$name: no line matches '$want'"; ok=1; }
    done
    if grep '^VMKIT-L2-NET-FAILED' "$1"; then
        say "$name: the guest reported network failures"
        ok=1
    fi
    # The listener exits after its one connection; one the guest never made is stopped.
    kill "$net_serve" 2>/dev/null
    wait "$net_serve"
    sed 's/^/net listener| /' /tmp/net-serve.log
    if grep -qx 'netbench: peer 10.20.0.2' /tmp/net-serve.log; then
        say "net: dom0's listener served the guest 10.20.0.2"
    else
        say "net: dom0's listener never served the guest 10.20.0.2"
        ok=1
    fi
    ports=$(ls /sys/class/net/xnbr0/brif 2>/dev/null | tr '\n' ' ')
    [ -z "$ports" ] || { say "net: ports left on xnbr0: $ports"; ok=1; }
    # dom0's own end of the bridge: what its stack took in from the guest and sent to it
    # (its neighbour entry for the guest is gone: the kernel flushes a link's neighbours
    # when it loses its carrier, as xnbr0 does when its last port leaves).
    st=/sys/class/net/xnbr0/statistics
    rx=$(cat $st/rx_packets) tx=$(cat $st/tx_packets)
    say "net: dom0's xnbr0 received $rx and sent $tx packets"
    [ "$rx" -gt 0 ] && [ "$tx" -gt 0 ] || { say "net: no packets one way on xnbr0"; ok=1; }
    ip link del xnbr0
    return $ok
}

# The PVH minimal kernel under xl, the baseline that benchmarks compare to. Nothing
# emulates its devices here, so it runs to its final `cli; hlt`, which Xen takes as a
# power-off; minimal.cfg preserves the domain so a clean shutdown ('s') can be told
# from a crash ('c').
xl_check() {
    say "=== running xl-create-minimal"
    verdict=FAILED
    start=$(date +%s)
    if xl create /xen/minimal.cfg </dev/null; then
        say "xl create returned after $(($(date +%s) - start)) s"
        state=""
        for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
            state=$(xl list vmkit-minimal 2>/dev/null | awk 'NR == 2 {print $5}')
            case $state in *s* | *c*) break ;; esac
            sleep 0.5
        done
        xl list | sed 's/^/vmkit-xen: xl list: /'
        say "vmkit-minimal state: $state"
        case $state in *c*) say "vmkit-minimal crashed" ;; *s*) verdict=ok ;; esac
        xl destroy vmkit-minimal </dev/null || verdict=FAILED
        if xl list vmkit-minimal >/dev/null 2>&1; then
            say "vmkit-minimal still listed after xl destroy"
            verdict=FAILED
        fi
    fi
    echo "VMKIT-TEST xl-create-minimal $verdict ($(($(date +%s) - start))s)"
}

[ -f /tests/xl-check ] && xl_check

while IFS='|' read -r name secs want args; do
    [ -n "$name" ] && run_test "$name" "$secs" "$want" "$args"
done </tests/list

# uptime_ms: sets now to dom0's uptime in ms (/proc/uptime's centiseconds; builtins only,
# so that timing costs no fork; the 1 prefix keeps "05" from being read as octal).
uptime_ms() {
    read -r up _ </proc/uptime
    now=$((${up%.*} * 1000 + (1${up#*.} - 100) * 10))
}

# One boot_linux side of the benchmark: $1 the binary in /tests, $2 the timeout (s), $3
# memory (MiB), $4 the kernel command line. Sets ms to start-to-marker, or returns 1.
bench_vmkit() {
    rm -f /tmp/bench.mark /tmp/bench.out /tmp/bench.rc
    uptime_ms
    t0=$now
    { timeout -s KILL "$2" "/tests/$1" --kernel /xen/vmlinux --initrd /xen/initrd.cpio.gz \
        --cmdline "$4" --mem "$3" --vcpus 1 --seccomp </dev/null 2>&1; echo $? >/tmp/bench.rc; } |
        while IFS= read -r line; do
            case $line in
                *VMKIT-L2-USERSPACE*)
                    if [ ! -f /tmp/bench.mark ]; then
                        uptime_ms
                        echo "$now" >/tmp/bench.mark
                    fi
                    ;;
            esac
            echo "$line" >>/tmp/bench.out
        done
    rc=$(cat /tmp/bench.rc 2>/dev/null || echo 255)
    if [ ! -f /tmp/bench.mark ]; then
        say "xen-linux-boot: boot_linux never printed VMKIT-L2-USERSPACE (exit status $rc):"
        tail -n 20 /tmp/bench.out 2>/dev/null | sed 's/^/xen-linux-boot vmkit| /'
        return 1
    fi
    ms=$(($(cat /tmp/bench.mark) - t0))
    [ "$rc" = 0 ] || { say "xen-linux-boot: boot_linux exit status $rc"; return 1; }
}

# The xl side: $1 the round, $2 the timeout (s), $3 memory (MiB), $4 the kernel command
# line. The same kernel and initramfs as a PVH domain (no device model, no disk); its
# console (hvc0) is read from xenconsoled's log as it grows. Sets ms, or returns 1.
bench_xl() {
    dom=vmkit-bench-pvh-$1
    clog=/var/log/xen/console/guest-$dom.log
    cat >/tmp/bench-pvh.cfg <<EOF
name = "$dom"
type = "pvh"
kernel = "/xen/vmlinux"
ramdisk = "/xen/initrd.cpio.gz"
cmdline = "$4"
memory = $3
vcpus = 1
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "preserve"
EOF
    rm -f "$clog"
    uptime_ms
    t0=$now
    deadline=$((t0 + $2 * 1000))
    if ! xl create /tmp/bench-pvh.cfg </dev/null >/tmp/bench-xl.out 2>&1; then
        say "xen-linux-boot: xl create failed:"
        sed 's/^/xen-linux-boot xl| /' /tmp/bench-xl.out
        return 1
    fi
    uptime_ms
    created=$((now - t0))
    # Polled with builtins every 50 ms: the log appears once xenconsoled attaches, then a
    # read at its end returns what there is (a partial line is kept for the next read).
    found=""
    while [ ! -e "$clog" ] && [ "$now" -lt "$deadline" ]; do
        sleep 0.05
        uptime_ms
    done
    if [ -e "$clog" ]; then
        exec 3<"$clog"
        acc=""
        while [ -z "$found" ] && [ "$now" -lt "$deadline" ]; do
            if IFS= read -r line <&3; then
                case "$acc$line" in *VMKIT-L2-USERSPACE*) uptime_ms; found=$now ;; esac
                acc=""
            else
                acc="$acc$line"
                case "$acc" in
                    *VMKIT-L2-USERSPACE*) uptime_ms; found=$now ;;
                    *) sleep 0.05; uptime_ms ;;
                esac
            fi
        done
        exec 3<&-
    fi
    # The guest resets itself after the marker (vmkit.bench=1) and on_reboot destroys it;
    # whatever is left (a hung guest) goes now.
    xl destroy "$dom" </dev/null >/dev/null 2>&1
    if [ -z "$found" ]; then
        say "xen-linux-boot: the xl guest never printed VMKIT-L2-USERSPACE in $2 s; its console:"
        tail -n 20 "$clog" 2>/dev/null | sed 's/^/xen-linux-boot xl| /'
        return 1
    fi
    ms=$((found - t0))
}

# med FILE: the median of the numbers in FILE, one a line (the mean of the middle two for
# an even count).
med() {
    sort -n "$1" | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2)}'
}

# The boot benchmark (issue 14): boot_linux (HVM) against `xl create` (PVH) of the same
# kernel and initramfs, start to VMKIT-L2-USERSPACE, in alternating rounds; prints the
# medians and their ratio. /tests/linux-bench: bin|rounds|timeout|memory|vmkit cmdline|xl
# cmdline. Fails if either side misses the marker in any round; the ratio is only shown.
linux_bench() {
    IFS='|' read -r bin rounds secs mem vcmd xcmd </tests/linux-bench
    say "=== running xen-linux-boot ($rounds rounds of boot_linux HVM, then xl create PVH)"
    bstart=$(date +%s)
    bverdict=ok
    : >/tmp/bench.vmkit
    : >/tmp/bench.xl
    r=1
    while [ "$r" -le "$rounds" ]; do
        v=none x=none
        if bench_vmkit "$bin" "$secs" "$mem" "$vcmd"; then
            echo "$ms" >>/tmp/bench.vmkit
            v=$ms
        else
            bverdict=FAILED
        fi
        created=none
        if bench_xl "$r" "$secs" "$mem" "$xcmd"; then
            echo "$ms" >>/tmp/bench.xl
            x=$ms
        else
            bverdict=FAILED
        fi
        say "xen-linux-boot round $r: boot_linux $v ms, xl $x ms (xl create returned at $created ms)"
        r=$((r + 1))
    done
    if [ "$bverdict" = ok ]; then
        vm=$(med /tmp/bench.vmkit)
        xm=$(med /tmp/bench.xl)
        ratio=$(awk -v a="$vm" -v b="$xm" 'BEGIN {printf "%.2f", a / b}')
        echo "VMKIT-BENCH xen-linux-boot vmkit_ms=$vm xl_ms=$xm ratio=$ratio rounds=$rounds" \
            "vmkit_all=$(paste -sd, /tmp/bench.vmkit) xl_all=$(paste -sd, /tmp/bench.xl)"
    fi
    xl list | awk 'NR > 2 {print $2}' | while read -r id; do
        say "xen-linux-boot left domain $id; destroying it"
        xl destroy "$id" </dev/null
    done
    echo "VMKIT-TEST xen-linux-boot $bverdict ($(($(date +%s) - bstart))s)"
}

[ -f /tests/linux-bench ] && linux_bench

# What a test left in /tmp/export (a snapshot to resume on the host), sent back on the
# console: a gzipped tar in base64 lines, paced so that Xen's console buffer never drops
# a byte, and its SHA-256 for run.sh to check.
if [ -d /tmp/export ]; then
    tar -cf - -C /tmp/export . | gzip -c >/tmp/export.tgz
    say "exporting /tmp/export: $(wc -c </tmp/export.tgz) bytes gzipped"
    n=0
    base64 /tmp/export.tgz | while read -r line; do
        echo "VMKIT-EXPORT $line"
        n=$((n + 1))
        [ $((n % 16)) = 0 ] && sleep 0.1
    done
    echo "VMKIT-EXPORT-SHA256 $(sha256sum /tmp/export.tgz | cut -d' ' -f1)"
fi

echo "VMKIT-DONE"
poweroff -f
sleep 10
