#!/usr/bin/env bash
# Benchmark (not a test): the connect rate (open + getLibVersion + close with python3-libvirt's
# openAuth) through one `virtgate up`, in one run and interleaved:
#   direct to the plain libvirtd (client certificate), through virtgate with a client certificate,
#   with a front-door password login (SCRAM-SHA-512, chosen by libvirt's client), to a host that
#   demands SASL (the gateway's SCRAM-SHA-256 login with `virtgate hosts credentials`), and both.
# Two real libvirtds from tests/lab/examples/bench_sasl_lab.rs. Loopback only; needs root.
#
#   sudo ./bench/sasl.sh                 # CONNECTS=100 ROUNDS=3 by default
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
[ "$(id -u)" -eq 0 ] || { echo "needs root (libvirtd): sudo $0" >&2; exit 1; }
PY=/usr/bin/python3
CONNECTS=${CONNECTS:-100}
ROUNDS=${ROUNDS:-3}

cargo build --release --quiet --bin virtgate
cargo build --release --quiet -p virtgate-testlab --example bench_sasl_lab
VG_BIN=$ROOT/target/release/virtgate
T=$(mktemp -d /tmp/virtgate-bench-sasl.XXXXXX)
chmod 700 "$T"
LAB=$T/lab
VG_PID=""
mkfifo "$T/lab.ctl"
"$ROOT/target/release/examples/bench_sasl_lab" "$LAB" <"$T/lab.ctl" >"$T/lab.log" 2>&1 &
LAB_PID=$!
exec 3>"$T/lab.ctl"
cleanup() {
    local rc=$?
    trap - EXIT
    if [ -n "$VG_PID" ]; then kill -TERM "$VG_PID" 2>/dev/null || true; wait "$VG_PID" 2>/dev/null || true; fi
    exec 3>&- # end of file: the lab stops both daemons by PID
    wait "$LAB_PID" 2>/dev/null || true
    rm -rf "$T"
    exit $rc
}
trap cleanup EXIT
for _ in $(seq 600); do
    grep -q '^READY$' "$T/lab.log" 2>/dev/null && break
    kill -0 "$LAB_PID" 2>/dev/null || break
    sleep 0.1
done
grep -q '^READY$' "$T/lab.log" || { echo "lab did not start:" >&2; tail -n 30 "$T/lab.log" >&2; exit 1; }
# shellcheck disable=SC1091
. "$LAB/lab.env"

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
VG=$T/virtgate
mkdir -p "$VG/data"
FRONT=$(free_port)
BROKER=$(free_port)
sed -e "s|@DIR@|$VG|g" -e "s|@BROKER_PORT@|$BROKER|g" -e "s|@FRONT_PORT@|$FRONT|g" \
    -e "s|@LIBVIRTD_PORT@|$LIBVIRTD_PORT|g" -e "s|@SASL_PORT@|$SASL_PORT|g" -e "s|@LAB@|$LAB|g" \
    -e "s|@CA@|$LAB/ca.pem|g" bench/sasl/virtgate.toml.in >"$VG/virtgate.toml"
"$VG_BIN" --config "$VG/virtgate.toml" up </dev/null >"$VG/virtgate.log" 2>&1 &
VG_PID=$!
vg() { "$VG_BIN" --config "$VG/virtgate.toml" "$@"; }
for _ in $(seq 200); do
    [ "$(vg hosts --json 2>/dev/null | grep -c '"trust": "pinned"')" -ge 2 ] && break
    sleep 0.1
done
echo "bench-password-1" | vg users add bench --password-stdin >/dev/null
echo "$SASL_PASSWORD" | vg hosts credentials h2 --user "$SASL_USER" --password-stdin >/dev/null

printf '[credentials-b]\nauthname=bench\npassword=bench-password-1\n\n[auth-libvirt-default]\ncredentials=b\n' >"$T/auth.conf"
CERT=$LAB/client
NOCERT=$LAB/client-nocert
via() { echo "test+tls://127.0.0.1:$FRONT/default?name=test://$1/default&pkipath=$2"; }
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $CONNECTS connects × $ROUNDS rounds per path" >&2
"$PY" "$ROOT/bench/sasl/connects.py" "$CONNECTS" "$ROUNDS" \
    "direct, certificate=test+tls://127.0.0.1:$LIBVIRTD_PORT/default?pkipath=$CERT" \
    "virtgate, certificate=$(via h1 "$CERT")" \
    "virtgate, password at the front door=$(via h1 "$NOCERT")@@$T/auth.conf" \
    "virtgate, certificate; SCRAM to the host=$(via h2 "$CERT")" \
    "virtgate, password; SCRAM to the host=$(via h2 "$NOCERT")@@$T/auth.conf"
