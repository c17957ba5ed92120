#!/usr/bin/env bash
# Benchmark (not a test): libvirt RPC with the real python3-libvirt client, in one run and
# interleaved, (a) directly to a real libvirtd over TLS, (b) through a TCP pass-through (HAProxy
# forwarding the client's own TLS bytes: the floor of any relay hop, no crypto in it), (c) through
# HAProxy doing the same TLS -> mTLS relay as virtgate, (d) through the virtgate proxy
# (`virtgate --config FILE up`) once the binary has a `proxy` subcommand; until then that row says
# "not available yet", (e) through the virtgate proxy to a host agent (`virtgate agent`, enrolled
# with `virtgate enroll`) in front of the same libvirtd's UNIX socket: mutual TLS with pinned keys
# plus the PAKE check on every connect, and (f) through the virtgate proxy to HAProxy's TCP
# pass-through in front of libvirtd's TLS port: a host-side hop with no crypto, the floor for (e)
# and anything else that sits between the network and libvirtd. Prints one table.
# Loopback only. Needs root (libvirtd) and the packages scripts/test.sh installs; installs
# haproxy if missing.
#
#   sudo ./bench/proxy.sh
#   sudo CALLS=2000 PROC_CALLS=500 CONNECTS=50 ./bench/proxy.sh      # a quick run
#
# Environment: CALLS (default 20000), PROCS (8), PROC_CALLS (5000), CONNECTS (300), ROUNDS (3);
# AGENT_WORKER_THREADS=N sets the agent's [runtime] worker_threads (0: one per CPU, 1: one thread);
# VIRTGATE=off skips the virtgate path; VIRTGATE_BIN=PATH uses that binary instead of building
# one; KEEP=1 keeps the scratch directory (configs, logs) for inspection.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ "$(id -u)" -ne 0 ]; then
    echo "bench/proxy.sh needs root (libvirtd); re-running with sudo" >&2
    exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME,CALLS,PROCS,PROC_CALLS,CONNECTS,ROUNDS,VIRTGATE,VIRTGATE_BIN,KEEP \
        "$0" "$@"
fi

PY=/usr/bin/python3 # python3-libvirt is installed for Debian's python only
BENCH_PY=$ROOT/bench/proxy/bench.py

"$PY" -c 'import libvirt' 2>/dev/null || {
    echo "python3-libvirt missing for $PY: run ./scripts/test.sh once (it installs the packages)" >&2
    exit 1
}
PATH=$PATH:/usr/sbin:/sbin # libvirtd, ss
command -v libvirtd >/dev/null || { echo "libvirtd missing: run ./scripts/test.sh once" >&2; exit 1; }

# --- haproxy (package scripts must not start the system service: policy-rc.d exit 101) --------
if ! command -v haproxy >/dev/null; then
    echo "installing haproxy" >&2
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    install_haproxy() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy >&2; }
    install_haproxy || { apt-get update -qq >&2 && install_haproxy; } || true
    [ $created_policy -eq 1 ] && rm -f /usr/sbin/policy-rc.d
    command -v haproxy >/dev/null || { echo "haproxy could not be installed" >&2; exit 1; }
fi

# --- builds -----------------------------------------------------------------------------------
LAB_BIN=$ROOT/target/release/examples/bench_proxy_lab
if ! cargo build --release --quiet -p virtgate-testlab --example bench_proxy_lab; then
    # The workspace may be mid-edit; the lab helper rarely changes, so an earlier build will do.
    [ -x "$LAB_BIN" ] || exit 1
    echo "cargo build of bench_proxy_lab failed; using the existing $LAB_BIN" >&2
fi

VG_BIN=${VIRTGATE_BIN:-}
VG_UNAVAILABLE=""
if [ "${VIRTGATE:-on}" = "off" ]; then
    VG_UNAVAILABLE="skipped (VIRTGATE=off)"
elif [ -z "$VG_BIN" ]; then
    if cargo build --release --quiet --bin virtgate 2>"${TMPDIR:-/tmp}/virtgate-bench-build.$$.log"; then
        VG_BIN=$ROOT/target/release/virtgate
    else
        echo "cargo build --bin virtgate failed; virtgate path not run. Build log tail:" >&2
        tail -n 15 "${TMPDIR:-/tmp}/virtgate-bench-build.$$.log" >&2
        VG_UNAVAILABLE="not run (build failed)"
    fi
    rm -f "${TMPDIR:-/tmp}/virtgate-bench-build.$$.log"
fi
if [ -z "$VG_UNAVAILABLE" ] && ! "$VG_BIN" --help 2>/dev/null | grep -Eq '^[[:space:]]+proxy([[:space:]]|$)'; then
    VG_UNAVAILABLE="not available yet"
fi

# --- scratch dir, cleanup ---------------------------------------------------------------------
T=$(mktemp -d /tmp/virtgate-bench-proxy.XXXXXX)
chmod 700 "$T"
LAB_PID="" HAPROXY_PID="" VG_PID="" AG_PID="" DRIVER_PID=""

# Stops one of our own children by PID: SIGTERM, up to 10 s, then SIGKILL.
stop_pid() {
    local pid=$1 name=$2
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "$name (pid $pid) ignored SIGTERM for 10 s; SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$DRIVER_PID" "benchmark driver"
    stop_pid "$AG_PID" "virtgate agent"
    stop_pid "$VG_PID" virtgate
    stop_pid "$HAPROXY_PID" haproxy
    if [ -n "$LAB_PID" ]; then
        # End of file on its stdin makes the lab stop libvirtd (by PID) and exit.
        exec 3>&-
        for _ in $(seq 150); do
            kill -0 "$LAB_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$LAB_PID" 2>/dev/null; then
            echo "lab did not stop within 15 s; SIGTERM (libvirtd pid ${LIBVIRTD_PID:-?} may be left)" >&2
            stop_pid "$LAB_PID" bench_proxy_lab
        fi
        wait "$LAB_PID" 2>/dev/null || true
    fi
    if [ "${KEEP:-0}" = 1 ]; then
        echo "kept $T" >&2
    else
        rm -rf "$T"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

fill() { # fill TEMPLATE OUT KEY=VALUE...
    local template=$1 out=$2 expr=()
    shift 2
    for kv in "$@"; do expr+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${expr[@]}" "$template" >"$out"
}

# --- libvirtd + certificates (tests/lab/examples/bench_proxy_lab.rs) --------------------------
LAB=$T/lab
mkfifo "$T/lab.ctl"
# Not under setsid: a new session is a separate scheduler autogroup, and CFS would then share
# the cores between libvirtd and everything else by group, unlike a run from one terminal. (A
# background job of this script ignores SIGINT anyway; Ctrl-C reaches the script, whose cleanup
# then stops the lab.)
"$LAB_BIN" "$LAB" <"$T/lab.ctl" >"$T/lab.log" 2>&1 &
LAB_PID=$!
exec 3>"$T/lab.ctl"
for _ in $(seq 600); do
    grep -q '^READY$' "$T/lab.log" 2>/dev/null && break
    kill -0 "$LAB_PID" 2>/dev/null || break
    sleep 0.1
done
grep -q '^READY$' "$T/lab.log" || { echo "libvirtd lab did not start:" >&2; tail -n 30 "$T/lab.log" >&2; exit 1; }
# shellcheck disable=SC1091
. "$LAB/lab.env" # LIBVIRTD_PORT, LIBVIRTD_PID, LIBVIRTD_SOCKET
CA=$LAB/ca.pem
CLIENT_PKI=$LAB/client
DIRECT_URI="test+tls://127.0.0.1:$LIBVIRTD_PORT/default?pkipath=$CLIENT_PKI"
"$PY" "$BENCH_PY" probe "$DIRECT_URI" 10 || { echo "direct libvirt connection failed" >&2; exit 1; }

# --- HAProxy ----------------------------------------------------------------------------------
HA=$T/haproxy
mkdir -p "$HA"
cat "$LAB/relay-server-cert.pem" "$LAB/relay-server-key.pem" >"$HA/proxy-server.pem"
cat "$LAB/relay-client-cert.pem" "$LAB/relay-client-key.pem" >"$HA/proxy-client.pem"
chmod 600 "$HA"/*.pem
HA_PORT=$(free_port)
PASS_PORT=$(free_port)
while [ "$PASS_PORT" = "$HA_PORT" ]; do PASS_PORT=$(free_port); done
fill "$ROOT/bench/proxy/haproxy.cfg.in" "$HA/haproxy.cfg" \
    FRONT_PORT="$HA_PORT" PASS_PORT="$PASS_PORT" LIBVIRTD_PORT="$LIBVIRTD_PORT" DIR="$HA" CA="$CA"
haproxy -c -q -f "$HA/haproxy.cfg" || { echo "haproxy rejected its configuration" >&2; exit 1; }
OPENSSL_CONF=$ROOT/bench/proxy/openssl-notickets.cnf haproxy -db -f "$HA/haproxy.cfg" \
    </dev/null >"$HA/haproxy.log" 2>&1 &
HAPROXY_PID=$!
HA_URI="test+tls://127.0.0.1:$HA_PORT/default?pkipath=$CLIENT_PKI"
"$PY" "$BENCH_PY" probe "$HA_URI" 10 "$HAPROXY_PID" || {
    echo "no libvirt connection through haproxy:" >&2
    tail -n 20 "$HA/haproxy.log" >&2
    exit 1
}
PASS_URI="test+tls://127.0.0.1:$PASS_PORT/default?pkipath=$CLIENT_PKI"
"$PY" "$BENCH_PY" probe "$PASS_URI" 10 "$HAPROXY_PID" || { echo "no libvirt connection through the pass-through" >&2; exit 1; }
HA_LABEL="HAProxy $(haproxy -v | sed -n 's/^HAProxy version \([0-9.]*\).*/\1/p') TLS→mTLS"

# --- virtgate ---------------------------------------------------------------------------------
VG_URI=""
if [ -z "$VG_UNAVAILABLE" ]; then
    VG=$T/virtgate
    mkdir -p "$VG/data"
    VG_PORT=$(free_port)
    BROKER_PORT=$(free_port)
    while [ "$BROKER_PORT" = "$VG_PORT" ]; do BROKER_PORT=$(free_port); done
    fill "$ROOT/bench/proxy/virtgate.toml.in" "$VG/virtgate.toml" \
        DIR="$VG" BROKER_PORT="$BROKER_PORT" FRONT_PORT="$VG_PORT" LIBVIRTD_PORT="$LIBVIRTD_PORT" \
        LAB="$LAB" CA="$CA" PASS_PORT="$PASS_PORT"
    "$VG_BIN" --config "$VG/virtgate.toml" up </dev/null >"$VG/virtgate.log" 2>&1 &
    VG_PID=$!
    VG_URI="test+tls://127.0.0.1:$VG_PORT/default?name=test://h1/default&pkipath=$CLIENT_PKI"
    # The broker probes the host first: allow up to 20 s until a libvirt connection works.
    if ! "$PY" "$BENCH_PY" probe "$VG_URI" 20 "$VG_PID"; then
        echo "no libvirt connection through virtgate within 20 s; log tail:" >&2
        tail -n 20 "$VG/virtgate.log" >&2
        stop_pid "$VG_PID" virtgate
        VG_PID=""
        VG_URI=""
        VG_UNAVAILABLE="failed to start (see the log above)"
    fi
fi
HOP_URI=""
if [ -n "$VG_URI" ]; then
    HOP_URI="test+tls://127.0.0.1:$VG_PORT/default?name=test://h3/default&pkipath=$CLIENT_PKI"
    "$PY" "$BENCH_PY" probe "$HOP_URI" 20 "$VG_PID" || {
        echo "no libvirt connection through virtgate and the pass-through; that row is skipped" >&2
        HOP_URI=""
    }
fi

# --- virtgate → host agent ---------------------------------------------------------------------
# The same gateway reaches host h2 through an agent on the lab libvirtd's UNIX socket, enrolled
# as an operator would: `virtgate enroll` prints the command, the agent runs it and exits.
AG_URI="" AG_UNAVAILABLE=""
if [ -n "$VG_URI" ]; then
    AG=$T/agent
    AG_PORT=$(free_port)
    AG_METRICS=$(free_port)
    placement=(--listen "127.0.0.1:$AG_PORT" --state-dir "$AG/state" --libvirt-socket "$LIBVIRTD_SOCKET"
        --no-announce --metrics-listen "127.0.0.1:$AG_METRICS")
    mkdir -p "$AG"
    if "$VG_BIN" --config "$VG/virtgate.toml" enroll h2 --address "127.0.0.1:$AG_PORT" --ttl 10m --json \
        >"$AG/token.json" 2>"$AG/enroll.log"; then
        # The printed command without its leading `virtgate`.
        read -r -a pasted < <("$PY" -c 'import json, sys; print(json.load(sys.stdin)["command"].split(None, 1)[1])' <"$AG/token.json")
        if timeout 60 "$VG_BIN" "${pasted[@]}" "${placement[@]}" </dev/null >"$AG/enrolled.log" 2>&1; then
            VIRTGATE_RUNTIME__WORKER_THREADS=${AGENT_WORKER_THREADS:-0} \
                "$VG_BIN" --log-format json agent "${placement[@]}" </dev/null >"$AG/agent.log" 2>&1 &
            AG_PID=$!
            AG_URI="test+tls://127.0.0.1:$VG_PORT/default?name=test://h2/default&pkipath=$CLIENT_PKI"
            if ! "$PY" "$BENCH_PY" probe "$AG_URI" 20 "$AG_PID"; then
                echo "no libvirt connection through virtgate and the agent; log tails:" >&2
                tail -n 10 "$AG/agent.log" "$VG/virtgate.log" >&2
                AG_URI="" AG_UNAVAILABLE="failed to start (see the log above)"
            fi
        else
            echo "agent enrollment failed:" >&2
            tail -n 10 "$AG/enrolled.log" >&2
            AG_UNAVAILABLE="enrollment failed (see the log above)"
        fi
    else
        tail -n 5 "$AG/enroll.log" >&2
        AG_UNAVAILABLE="virtgate enroll failed (see the log above)"
    fi
else
    AG_UNAVAILABLE="needs the virtgate path"
fi

# --- run ----------------------------------------------------------------------------------------
export AG_URI AG_PID AG_UNAVAILABLE HOP_URI
export VG_URI VG_PID VG_UNAVAILABLE PASS_URI HA_URI HAPROXY_PID HA_LABEL DIRECT_URI LIBVIRTD_PID
"$PY" - >"$T/paths.json" <<'EOF'
import json, os
e = os.environ
vg = {"name": "virtgate", "label": "virtgate proxy (`up`)"}
if e["VG_URI"]:
    vg.update(uri=e["VG_URI"], relay_pid=int(e["VG_PID"]))
else:
    vg["unavailable"] = e["VG_UNAVAILABLE"]
ag = {"name": "agent", "label": "virtgate proxy → host agent (PAKE) → libvirtd UNIX socket"}
if e["AG_URI"]:
    ag.update(uri=e["AG_URI"], relay_pid=int(e["VG_PID"]), extra_pids=[int(e["AG_PID"])])
else:
    ag["unavailable"] = e["AG_UNAVAILABLE"]
hop = {"name": "hop", "label": "virtgate proxy → TCP pass-through → libvirtd TLS (host-side hop floor)"}
if e["HOP_URI"]:
    hop.update(uri=e["HOP_URI"], relay_pid=int(e["VG_PID"]), extra_pids=[int(e["HAPROXY_PID"])])
else:
    hop["unavailable"] = "needs the virtgate path"
print(json.dumps({
    "libvirtd_pid": int(e["LIBVIRTD_PID"]),
    "paths": [
        {"name": "direct", "label": "direct client → libvirtd", "uri": e["DIRECT_URI"]},
        {"name": "passthrough", "label": "TCP pass-through, no TLS termination (floor)",
         "uri": e["PASS_URI"], "relay_pid": int(e["HAPROXY_PID"])},
        {"name": "haproxy", "label": e["HA_LABEL"], "uri": e["HA_URI"],
         "relay_pid": int(e["HAPROXY_PID"])},
        vg,
        hop,
        ag,
    ],
}))
EOF

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)," \
    "load average $(cut -d' ' -f1-3 /proc/loadavg);" \
    "libvirt $("$PY" -c 'import libvirt; v = libvirt.getVersion(); print(f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}")');" \
    "libvirtd pid $LIBVIRTD_PID port $LIBVIRTD_PORT; haproxy pid $HAPROXY_PID;" \
    "virtgate ${VG_PID:+pid $VG_PID}${VG_UNAVAILABLE}" >&2
# In the background so that a signal to this script is handled at once (wait is interruptible).
"$PY" "$BENCH_PY" driver "$T/paths.json" &
DRIVER_PID=$!
rc=0
wait "$DRIVER_PID" || rc=$?
DRIVER_PID=""
if [ -n "$AG_URI" ]; then
    # The gateway's own measure of the check (hello to verdict), over every connect of the run.
    curl -s --cacert "$VG/data/pki/broker/cacert.pem" "https://127.0.0.1:$BROKER_PORT/metrics" |
        awk '/^virtgate_proxy_secondary_check_duration_seconds_sum/ {s = $2}
             /^virtgate_proxy_secondary_check_duration_seconds_count/ {n = $2}
             /^virtgate_proxy_secondary_checks_total.*result="ok"/ {ok += $2}
             /^virtgate_proxy_secondary_checks_total/ {all += $2}
             END { if (n > 0) printf "Agent check at the gateway (hello to verdict): mean %.3f ms over %d checks, %d of %d ok.\n", 1000 * s / n, n, ok, all }'
fi
exit $rc
