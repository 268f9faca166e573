# shellcheck shell=bash
# Shared helpers of the SVM harness scripts (sourced, not run).

# Logs go to stderr: assets.sh keeps stdout for the asset directory's path.
log() {
    echo "svm: $*" >&2
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
