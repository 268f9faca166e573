#!/usr/bin/env bash
# Runs vmkit's whole test suite on this host: unit, integration (on the real /dev/kvm), doc
# and guest-kernel tests. Installs what a fresh Debian machine lacks (a C toolchain for the
# guest kernel, the Rust components the checks use).
#
#   ci/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null || need_apt+=(gcc)
command -v ld >/dev/null || need_apt+=(binutils)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
    else
        echo "ci/test.sh: please install ${need_apt[*]} (needed to build the guest kernel)" >&2
        exit 1
    fi
fi

if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
    echo "ci/test.sh: /dev/kvm is missing or not read-writable for $(id -un);" \
         "the integration tests run guests on the real hypervisor" >&2
    exit 1
fi

cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked
