#!/usr/bin/env bash
# Benchmark (not a test): CPU instructions the gateway spends per relayed call, counted by
# callgrind, so two builds can be compared on a noisy machine (instruction counts do not depend on
# what else runs). For each binary: the gateway (`virtgate up` with the same configuration as
# bench/proxy.sh) runs under `valgrind --tool=callgrind`; one python3-libvirt connection makes
# LOW, then (in a second run) HIGH getLibVersion() calls through it; the difference of the two
# totals over HIGH - LOW is the gateway's instructions per call, with start-up, TLS handshakes and
# probes cancelled out. Loopback only; needs root (libvirtd) and valgrind.
#
#   sudo ./bench/instructions.sh NEW_BINARY [OLD_BINARY]
#   sudo LOW=200 HIGH=1200 ./bench/instructions.sh target/release/virtgate /tmp/old/virtgate
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
[ "$(id -u)" -eq 0 ] || { echo "needs root (libvirtd): sudo $0 $*" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "valgrind missing: apt-get install valgrind" >&2; exit 1; }
[ $# -ge 1 ] || { echo "usage: $0 NEW_BINARY [OLD_BINARY]" >&2; exit 2; }
LOW=${LOW:-300}
HIGH=${HIGH:-1800}
PY=/usr/bin/python3

cargo build --release --quiet -p virtgate-testlab --example bench_proxy_lab
T=$(mktemp -d /tmp/virtgate-bench-instr.XXXXXX)
LAB=$T/lab
coproc LABPROC { "$ROOT/target/release/examples/bench_proxy_lab" "$LAB"; }
read -r ready <&"${LABPROC[0]}"
[ "$ready" = READY ] || { echo "lab did not start" >&2; exit 1; }
# shellcheck disable=SC1091
. "$LAB/lab.env"
cleanup() { exec {LABPROC[1]}>&- 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Total instructions (Ir) of one gateway run relaying CALLS calls on one connection.
run() {
    local bin=$1 calls=$2 dir
    dir=$(mktemp -d "$T/run.XXXXXX")
    local front broker
    front=$(free_port); broker=$(free_port)
    sed -e "s|@DIR@|$dir|g" -e "s|@BROKER_PORT@|$broker|g" -e "s|@FRONT_PORT@|$front|g" \
        -e "s|@LIBVIRTD_PORT@|$LIBVIRTD_PORT|g" -e "s|@LAB@|$LAB|g" -e "s|@CA@|$LAB/ca.pem|g" \
        "$ROOT/bench/proxy/virtgate.toml.in" >"$dir/virtgate.toml"
    # PROXY_EXTRA: more [proxy] keys for this run (e.g. "close_revoked_sessions = false").
    if [ -n "${PROXY_EXTRA:-}" ]; then
        sed -i "s|^\[proxy\]$|[proxy]\n$PROXY_EXTRA|" "$dir/virtgate.toml"
    fi
    valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" \
        "$bin" --config "$dir/virtgate.toml" up </dev/null >"$dir/log" 2>&1 &
    local pid=$!
    local uri="test+tls://127.0.0.1:$front/default?name=test://h1/default&pkipath=$LAB/client"
    # Wait until the broker has pinned h1 (first_sight = tofu): then one connection works at
    # once, and both runs do the same start-up work.
    for _ in $(seq 600); do grep -q 'pinned' "$dir/log" && break; sleep 0.5; done
    grep -q 'pinned' "$dir/log" || { echo "h1 never pinned; log:" >&2; tail "$dir/log" >&2; exit 1; }
    CALLS=$calls "$PY" - "$uri" "$calls" <<'EOF'
import sys, libvirt
libvirt.registerErrorHandler(lambda *a: None, None)
c = libvirt.open(sys.argv[1])
for _ in range(int(sys.argv[2])):
    c.getLibVersion()
c.close()
EOF
    kill -TERM "$pid"
    wait "$pid" || true
    sed -n 's/^summary: *\([0-9]*\).*/\1/p; s/^totals: *\([0-9]*\).*/\1/p' "$dir/cg.out" | head -1
}

per_call() {
    local bin=$1 low high
    low=$(run "$bin" "$LOW")
    high=$(run "$bin" "$HIGH")
    echo $(( (high - low) / (HIGH - LOW) ))
}

printf '| binary | gateway instructions per relayed call |\n|---|---|\n'
for bin in "$@"; do
    printf '| %s | %s |\n' "$bin" "$(per_call "$bin")"
done
echo "callgrind, one python3-libvirt connection, ($HIGH - $LOW) getLibVersion() calls: the difference of two runs per binary."
