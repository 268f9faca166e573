# shellcheck shell=bash
# Shared helpers of the SVM harness scripts and of ci/linux-guest.sh (sourced, not run):
# logging, installing missing tools, and getting a Debian kernel and a busybox initramfs
# without installing the kernel.

# Logs go to stderr: assets.sh and linux-guest.sh keep stdout for their output directory's
# path. A script sets log_prefix before sourcing this file to name itself.
log() {
    echo "${log_prefix:-svm}: $*" >&2
}

# need CMD:PACKAGE... installs, with apt-get, the packages whose command is missing. CI starts
# from a fresh Debian 12, so nothing but apt and coreutils can be assumed.
need() {
    local pkgs=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || pkgs+=("${pair#*:}")
    done
    [ ${#pkgs[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        log "missing ${pkgs[*]}; run as root or install them"
        return 1
    fi
    log "installing ${pkgs[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2 ||
        { apt-get update -qq >&2 &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                "${pkgs[@]}" >&2; }
}

# cpio_dir DIR: an uncompressed newc archive of the staging directory DIR on stdout, owned
# by root, sorted and with mtimes reset (in DIR too), so the same tree gives the same bytes.
cpio_dir() {
    (cd "$1" && find . -mindepth 1 -exec touch -h -d @0 {} + &&
        find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet)
}

# busybox_is_static: whether /bin/busybox exists and is linked statically (Debian's
# busybox-static; the package busybox is dynamic): an initramfs has no shared libraries.
busybox_is_static() {
    [ -x /bin/busybox ] && command -v readelf >/dev/null &&
        ! readelf -lW /bin/busybox | grep -q 'Requesting program interpreter'
}

# static_busybox: the path of a statically linked busybox (/bin/busybox), installing
# busybox-static if busybox is missing; fails if it is dynamic.
static_busybox() {
    [ -x /bin/busybox ] || need busybox:busybox-static
    if ! busybox_is_static; then
        log "/bin/busybox is dynamically linked; the initramfs needs busybox-static"
        return 1
    fi
    echo /bin/busybox
}

# busybox_tree BUSYBOX DIR: BUSYBOX as DIR/bin/busybox, with a link for each of its applets.
busybox_tree() {
    local applet
    mkdir -p "$2/bin"
    cp "$1" "$2/bin/busybox"
    for applet in $("$1" --list); do
        [ "$applet" = busybox ] || ln -s busybox "$2/bin/$applet"
    done
}

# kernel_packages META...: the versioned kernel package behind each meta package, in order,
# on one line, e.g. "linux-image-6.1.0-56-cloud-amd64" for linux-image-cloud-amd64 (one
# apt-cache call: each costs ~1 s). Updates apt's lists once if they do not know one.
kernel_packages() {
    local got
    got=$(kernel_packages_known "$@")
    if [ "$(wc -w <<<"$got")" -ne $# ]; then
        apt_update
        got=$(kernel_packages_known "$@")
    fi
    [ "$(wc -w <<<"$got")" -eq $# ] || { log "apt knows no kernel package behind $*"; return 1; }
    echo "$got"
}
kernel_packages_known() {
    apt-cache depends "$@" 2>/dev/null | awk -v metas="$*" '
        /^[^ ]/ { meta = $1 }
        /Depends: linux-image-[0-9]/ && !(meta in dep) { dep[meta] = $2 }
        END { n = split(metas, m, " "); for (i = 1; i <= n; i++) if (m[i] in dep) printf "%s ", dep[m[i]]; print "" }'
}

apt_updated=no
apt_update() {
    if [ $apt_updated = no ]; then
        log "apt-get update"
        apt-get update -qq >&2
        apt_updated=yes
    fi
}

# fetch_deb DIR PACKAGE: path of PACKAGE's .deb in DIR, downloading it there if absent
# (apt-get download: nothing is installed).
fetch_deb() {
    local dir=$1 pkg=$2 deb
    mkdir -p "$dir"
    deb=$(ls "$dir/${pkg}"_*.deb 2>/dev/null | tail -n 1 || true)
    if [ -z "$deb" ]; then
        log "downloading $pkg"
        # apt-get download as root warns that _apt cannot write here; that is harmless.
        (cd "$dir" && apt-get download -q "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2) ||
            { apt_update && (cd "$dir" && apt-get download -q "$pkg" >&2 2>/dev/null); }
        deb=$(ls "$dir/${pkg}"_*.deb 2>/dev/null | tail -n 1 || true)
        [ -n "$deb" ] || { log "could not download $pkg"; return 1; }
    fi
    echo "$deb"
}

# unpack DEB DIR: the package's files under DIR (only boot/ and lib/modules/ are needed).
unpack() {
    rm -rf "$2"
    mkdir -p "$2"
    dpkg-deb -x "$1" "$2"
}

# kernel_images TREE DIR: from a kernel package unpacked in TREE, DIR/bzImage, DIR/config,
# and DIR/vmlinux, the uncompressed ELF taken out of the bzImage (it carries the PVH entry
# note when the kernel has one).
kernel_images() {
    cp "$1"/boot/vmlinuz-* "$2/bzImage"
    cp "$1"/boot/config-* "$2/config"
    python3 "$(dirname "${BASH_SOURCE[0]}")/extract-vmlinux.py" "$2/bzImage" "$2/vmlinux" >&2
}

# install_modules TREE DEST NAME...: copies NAME... and everything they depend on from the
# unpacked kernel TREE into DEST as plain NAME.ko, and writes DEST/order with dependencies
# first. The package carries no modules.dep (depmod makes it on install), so dependencies
# come from each module's own .modinfo depends= entry. Modules the config builds in are not
# in the tree and need no loading; asking for one that is neither is an error.
install_modules() {
    local tree=$1 dest=$2
    shift 2
    local -A path=() seen=()
    local f base
    # Index by the name a module goes by in depends= lists: file name without .ko*, '-' as
    # '_' (plain parameter expansion: thousands of files, no forks).
    while IFS= read -r f; do
        base=${f##*/}
        base=${base%%.ko*}
        path[${base//-/_}]=$f
    done < <(find "$tree" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')
    rm -rf "$dest"
    mkdir -p "$dest"
    : >"$dest/order"
    visit() {
        local name=${1//-/_} file deps dep
        [ -n "${seen[$name]:-}" ] && return 0
        seen[$name]=1
        file=${path[$name]:-}
        if [ -z "$file" ]; then
            local cfg
            cfg=$(ls "$tree"/boot/config-* | head -n 1)
            log "module $name is not in $(basename "$tree") (built in? see $cfg)"
            return 1
        fi
        case $file in
            *.ko.xz) deps=$(xz -dc "$file" | tr '\0' '\n' | grep -a -m1 '^depends=' || true) ;;
            *.ko.zst) deps=$(zstd -dcq "$file" | tr '\0' '\n' | grep -a -m1 '^depends=' || true) ;;
            *.ko.gz) deps=$(gzip -dc "$file" | tr '\0' '\n' | grep -a -m1 '^depends=' || true) ;;
            *) deps=$(tr '\0' '\n' <"$file" | grep -a -m1 '^depends=' || true) ;;
        esac
        deps=${deps#depends=}
        for dep in ${deps//,/ }; do
            visit "$dep"
        done
        case $file in
            *.ko.xz) xz -dc "$file" >"$dest/$name.ko" ;;
            *.ko.zst) zstd -dcq "$file" >"$dest/$name.ko" ;;
            *.ko.gz) gzip -dc "$file" >"$dest/$name.ko" ;;
            *) cp "$file" "$dest/$name.ko" ;;
        esac
        echo "$name" >>"$dest/order"
    }
    local m
    for m in "$@"; do
        visit "$m"
    done
}

# pvh_note VMLINUX: says whether VMLINUX has the PVH entry note that PVH boot (what vmkit's
# boot_linux uses) needs: XEN_ELFNOTE_PHYS32_ENTRY, a Xen note of type 18 (0x12).
pvh_note() {
    if readelf -nW "$1" | grep -q 'Xen .*(0x00000012)'; then
        log "$(basename "$1") has the PVH entry note (Xen, type 18)"
    else
        log "$(basename "$1") has NO PVH entry note (Xen, type 18): PVH boot will not work"
    fi
}

# busybox_initrd OUTPUT BUSYBOX INIT MODULES FILE...: a gzipped initramfs at OUTPUT holding
# BUSYBOX and its applets in /bin, INIT as /init, the directory MODULES (*.ko and their load
# order) as /modules, and each FILE in /. Reproducible: see cpio_dir.
busybox_initrd() {
    local output=$1 busybox=$2 init=$3 modules=$4 stage=$1.stage
    shift 4
    rm -rf "$stage"
    mkdir -p "$stage"/{dev,proc,sys,tmp,modules}
    busybox_tree "$busybox" "$stage"
    cp "$init" "$stage/init"
    chmod 755 "$stage/init"
    cp "$modules"/* "$stage/modules/"
    [ $# -eq 0 ] || cp "$@" "$stage/"
    cpio_dir "$stage" | gzip -n -9 >"$output.tmp"
    mv "$output.tmp" "$output"
    rm -rf "$stage"
}

# build_netbench OUT STAMP: ci/svm/netbench.rs built at OUT (static, crt-static: glibc's
# libc.a; stripped: it goes into an initramfs that guests unpack at TCG speed), rebuilt when its
# source or the compiler changes (the file STAMP records them).
build_netbench() {
    local out=$1 stamp=$2 src want
    src="$(dirname "${BASH_SOURCE[0]}")/netbench.rs"
    command -v rustc >/dev/null || { log "rustc is missing (netbench is built with it)"; return 1; }
    want=$({ cat "$src"; rustc -vV; } | sha256sum | cut -d' ' -f1)
    [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && [ -x "$out" ] && return 0
    log "building netbench"
    rustc --edition 2021 -O -C target-feature=+crt-static -C strip=symbols -o "$out.tmp" "$src" >&2 ||
        return 1
    if readelf -lW "$out.tmp" | grep -q 'Requesting program interpreter'; then
        log "netbench did not link statically (is libc6-dev's libc.a installed?)"
        return 1
    fi
    mv "$out.tmp" "$out" && echo "$want" >"$stamp"
}
