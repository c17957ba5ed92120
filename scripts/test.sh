#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need (Debian packages,
# without starting any service), then formatting, lints, and every test (unit, integration and
# end-to-end against real libvirtd, virsh, python3-libvirt and avahi in network namespaces).
# Needs root: the end-to-end tests create network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh needs root (network namespaces, package installs); re-running with sudo" >&2
    exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME "$0" "$@"
fi

PACKAGES=(
    libvirt-daemon libvirt-clients python3-libvirt gnutls-bin sasl2-bin
    libsasl2-modules libsasl2-modules-db avahi-daemon avahi-utils dbus iproute2 util-linux
    prometheus
)

# Package maintainer scripts of libvirt-daemon, sasl2-bin and avahi-daemon would start their
# daemons in this (root) network namespace; policy-rc.d exiting 101 forbids that. Ours is
# removed again afterwards, an existing one is left alone.
ensure_packages() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing: ${missing[*]}"
    local created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    [ $created_policy -eq 1 ] && rm -f /usr/sbin/policy-rc.d
    return 0
}

ensure_packages
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== chart check (installs helm, kubernetes-validate, CRD schemas on first use; offline after)"
./scripts/chart-check.sh
echo "== fuzz smoke (installs cargo-fuzz on first use; replays every corpus, fuzzes each target 5 s)"
./scripts/fuzz-smoke.sh
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast -- --test-threads=2
