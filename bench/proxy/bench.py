#!/usr/bin/python3
"""libvirt RPC benchmark client for bench/proxy.sh (python3-libvirt; run with /usr/bin/python3).

Subcommands (the first is what the script runs; the others are its child processes):

  driver PATHS_JSON      interleaved rounds over every path, prints the table
  single URI CALLS [PID...]
                         one connection, warm-up call, CALLS x getLibVersion() each timed with
                         perf_counter_ns; CPU ticks (utime+stime) of each PID around the loop
  worker URI CALLS       connect + warm-up, print "ready", wait for "go" on stdin, CALLS calls
  connects URI N         N x (open, getLibVersion, close) in sequence
  probe URI SECONDS [PID]
                         retry open+getLibVersion+close until it works (exit 0) or SECONDS pass
                         (exit 1); gives up early when PID (the relay) exits

Counts come from the environment: CALLS (test 1, default 20000), PROCS x PROC_CALLS (test 2,
default 8 x 5000), CONNECTS (test 3, default 300), ROUNDS (default 3).
"""

import json
import math
import os
import selectors
import statistics
import subprocess
import sys
import time

import libvirt

# Without this libvirt prints every error (e.g. the probe's refused connects) on stderr.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

HERE = os.path.abspath(__file__)
PY = "/usr/bin/python3"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def env_int(name, default):
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def cpu_ticks(pid):
    """utime + stime of a whole process (all its threads), in clock ticks; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])


def machine_ticks():
    """(user+nice+system, steal) over all CPUs from /proc/stat, in clock ticks."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2], (v[7] if len(v) > 7 else 0)


def own_ticks(pids):
    """CPU ticks of this process, its reaped children (the clients) and `pids` (the servers)."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    mine = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return mine + sum(cpu_ticks(p) or 0 for p in pids)


def percentile(sorted_values, q):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100.0 * len(sorted_values))))
    return sorted_values[rank - 1]


# ---------------------------------------------------------------------------------------------
# Child processes: each prints one JSON object on stdout.


def cmd_single(uri, calls, pids):
    conn = libvirt.open(uri)
    conn.getLibVersion()  # warm-up
    call = conn.getLibVersion
    clock = time.perf_counter_ns
    durations = [0] * calls
    before = [cpu_ticks(p) for p in pids]
    start = clock()
    for i in range(calls):
        t0 = clock()
        call()
        durations[i] = clock() - t0
    end = clock()
    after = [cpu_ticks(p) for p in pids]
    conn.close()
    durations.sort()
    cpu_us = [
        None if b is None or a is None else (a - b) * 1e6 / CLK_TCK / calls
        for b, a in zip(before, after)
    ]
    print(json.dumps({
        "calls_per_s": calls / ((end - start) / 1e9),
        "p50_us": percentile(durations, 50) / 1e3,
        "p99_us": percentile(durations, 99) / 1e3,
        "cpu_us_per_call": cpu_us,
    }))


def cmd_worker(uri, calls):
    conn = libvirt.open(uri)
    conn.getLibVersion()  # warm-up
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit(2)
    call = conn.getLibVersion
    start = time.monotonic_ns()  # CLOCK_MONOTONIC: comparable across processes
    for _ in range(calls):
        call()
    end = time.monotonic_ns()
    conn.close()
    print(json.dumps({"start_ns": start, "end_ns": end, "calls": calls}), flush=True)


def cmd_connects(uri, n):
    start = time.perf_counter_ns()
    for _ in range(n):
        conn = libvirt.open(uri)
        conn.getLibVersion()
        conn.close()
    end = time.perf_counter_ns()
    print(json.dumps({"connects_per_s": n / ((end - start) / 1e9)}))


def cmd_probe(uri, seconds, pid):
    deadline = time.monotonic() + seconds
    last = "no attempt"
    while time.monotonic() < deadline:
        if pid is not None and cpu_ticks(pid) is None:
            print(f"relay process {pid} exited", file=sys.stderr)
            sys.exit(1)
        try:
            conn = libvirt.open(uri)
            conn.getLibVersion()
            conn.close()
            sys.exit(0)
        except libvirt.libvirtError as e:
            last = str(e)
        time.sleep(0.25)
    print(f"no libvirt connection after {seconds} s: {last}", file=sys.stderr)
    sys.exit(1)


# ---------------------------------------------------------------------------------------------
# Driver.


class Failed(Exception):
    pass


def run_child(args, timeout):
    try:
        out = subprocess.run([PY, HERE] + args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Failed(f"{args[0]} timed out after {timeout} s")
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        raise Failed(f"{args[0]} exited {out.returncode}: {tail}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def read_lines(procs, deadline, what):
    """One stdout line from each process, or Failed once `deadline` passes."""
    sel = selectors.DefaultSelector()
    lines = {}
    buffers = {}
    for i, p in enumerate(procs):
        os.set_blocking(p.stdout.fileno(), False)
        sel.register(p.stdout, selectors.EVENT_READ, i)
        buffers[i] = b""
    try:
        while len(lines) < len(procs):
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failed(f"workers: {len(procs) - len(lines)} of {len(procs)} gave no {what}")
            for key, _ in sel.select(timeout=min(left, 1.0)):
                i = key.data
                chunk = os.read(key.fileobj.fileno(), 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    if i not in lines:
                        err = procs[i].stderr.read().decode(errors="replace").strip()
                        raise Failed(f"worker {i} exited before its {what}: "
                                     f"{(err.splitlines() or ['(no stderr)'])[-1]}")
                    continue
                buffers[i] += chunk
                if b"\n" in buffers[i] and i not in lines:
                    lines[i] = buffers[i].split(b"\n", 1)[0].decode()
                    buffers[i] = buffers[i].split(b"\n", 1)[1]
    finally:
        sel.close()
    return [lines[i] for i in range(len(procs))]


def run_workers(uri, procs_n, calls, timeout):
    procs = [
        subprocess.Popen([PY, HERE, "worker", uri, str(calls)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(procs_n)
    ]
    try:
        ready = read_lines(procs, time.monotonic() + 60, "ready line")
        if any(r != "ready" for r in ready):
            raise Failed(f"unexpected worker output {ready}")
        for p in procs:  # all connected: start together
            p.stdin.write(b"go\n")
            p.stdin.flush()
        results = [json.loads(line) for line in read_lines(procs, time.monotonic() + timeout,
                                                             "result")]
        for p in procs:
            p.wait(timeout=30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    start = min(r["start_ns"] for r in results)
    end = max(r["end_ns"] for r in results)
    return sum(r["calls"] for r in results) / ((end - start) / 1e9)


def measure(path, counts, libvirtd_pid):
    """Tests 1-3 on one path; returns {metric: value}."""
    relay_pids = relay_pids_of(path)
    pids = [libvirtd_pid] + relay_pids
    # Generous bounds: 5 ms per call / 200 ms per connect is ~50x slower than expected.
    single = run_child(["single", path["uri"], str(counts["calls"])] + [str(p) for p in pids],
                       timeout=60 + counts["calls"] * 0.005)
    result = {
        "calls_per_s": single["calls_per_s"],
        "p50_us": single["p50_us"],
        "p99_us": single["p99_us"],
        "libvirtd_cpu_us": single["cpu_us_per_call"][0],
        # Every relay process of the path (the gateway, and the host agent behind it).
        "relay_cpu_us": (sum(c or 0 for c in single["cpu_us_per_call"][1:])
                         if relay_pids else None),
    }
    result["aggregate_calls_per_s"] = run_workers(
        path["uri"], counts["procs"], counts["proc_calls"],
        timeout=60 + counts["proc_calls"] * counts["procs"] * 0.005)
    result["connects_per_s"] = run_child(["connects", path["uri"], str(counts["connects"])],
                                         timeout=60 + counts["connects"] * 0.2)["connects_per_s"]
    return result


def relay_pids_of(path):
    """The processes a path's calls go through besides libvirtd and the client."""
    return ([path["relay_pid"]] if path.get("relay_pid") else []) + path.get("extra_pids", [])


def ratio_of(a, b, key):
    """a[key] / b[key] as text, or a dash when either is missing."""
    if a[key] is None or b[key] in (None, 0):
        return "—"
    return f"{a[key] / b[key]:.2f}×"


def median_of(rounds, key):
    values = [r[key] for r in rounds if r.get(key) is not None]
    return statistics.median(values) if values else None


def fmt_num(v):
    return "—" if v is None else f"{v:.0f}"


def fmt_ratio(v, base):
    if v is None:
        return "—"
    if base is None or base == 0:
        return fmt_num(v)
    return f"{v:.0f} ({v / base:.2f}×)"


def cmd_driver(paths_file):
    with open(paths_file) as f:
        spec = json.load(f)
    counts = {
        "calls": env_int("CALLS", 20000),
        "procs": env_int("PROCS", 8),
        "proc_calls": env_int("PROC_CALLS", 5000),
        "connects": env_int("CONNECTS", 300),
        "rounds": env_int("ROUNDS", 3),
    }
    paths = spec["paths"]
    runnable = [p for p in paths if p.get("uri")]
    rounds = {p["name"]: [] for p in paths}
    errors = {p["name"]: [] for p in paths}
    log = sys.stderr
    print(f"counts: 1 conn {counts['calls']} calls; {counts['procs']} procs x "
          f"{counts['proc_calls']} calls; {counts['connects']} connects; "
          f"{counts['rounds']} rounds, interleaved", file=log)
    server_pids = [spec["libvirtd_pid"]] + sorted({pid for p in runnable
                                                   for pid in relay_pids_of(p)})
    wall0, (busy0, steal0), own0 = time.monotonic(), machine_ticks(), own_ticks(server_pids)
    for r in range(counts["rounds"]):
        # Rotate the order each round so no path always runs first (or right after another).
        order = runnable[r % len(runnable):] + runnable[:r % len(runnable)] if runnable else []
        for path in order:
            t0 = time.monotonic()
            try:
                m = measure(path, counts, spec["libvirtd_pid"])
            except Failed as e:
                errors[path["name"]].append(str(e))
                print(f"round {r + 1} {path['name']}: FAILED: {e}", file=log, flush=True)
                continue
            rounds[path["name"]].append(m)
            print(f"round {r + 1} {path['name']:>11}: {m['calls_per_s']:7.0f} calls/s, "
                  f"p50 {m['p50_us']:4.0f} µs, p99 {m['p99_us']:4.0f} µs, "
                  f"{counts['procs']} procs {m['aggregate_calls_per_s']:7.0f} calls/s, "
                  f"{m['connects_per_s']:5.0f} connects/s, relay CPU {fmt_num(m['relay_cpu_us'])} "
                  f"µs/call, libvirtd CPU {fmt_num(m['libvirtd_cpu_us'])} µs/call "
                  f"({time.monotonic() - t0:.0f} s)", file=log, flush=True)

    wall = time.monotonic() - wall0
    busy1, steal1 = machine_ticks()
    # Whatever else ran meanwhile (builds, tests) competed for the same cores. Approximate: CPU
    # time of the servers' exited threads or of interrupts charged to no task counts as "other".
    other_s = max(0, (busy1 - busy0) - (own_ticks(server_pids) - own0)) / CLK_TCK
    steal_s = (steal1 - steal0) / CLK_TCK

    keys = ["calls_per_s", "p50_us", "p99_us", "aggregate_calls_per_s", "connects_per_s",
            "relay_cpu_us", "libvirtd_cpu_us"]
    med = {name: ({k: median_of(rs, k) for k in keys} if rs else None)
           for name, rs in rounds.items()}
    base = med.get("direct") or {k: None for k in keys}

    print()
    print(f"| path | 1 conn calls/s | p50 / p99 µs per call | {counts['procs']} procs aggregate "
          f"calls/s | connects/s (open+call+close) | relay CPU µs per call | libvirtd CPU µs "
          f"per call |")
    print("|---|---|---|---|---|---|---|")
    for p in paths:
        m = med[p["name"]]
        if not p.get("uri"):
            why = p.get("unavailable", "not available yet")
            print(f"| {p['label']} | {why} | — | — | — | — | — |")
            continue
        if m is None:
            why = "failed: " + (errors[p["name"]] or ["?"])[-1].replace("|", "/")
            print(f"| {p['label']} | {why} | | | | | |")
            continue
        direct = p["name"] == "direct"
        ratio = (lambda k: fmt_num(m[k])) if direct else (lambda k: fmt_ratio(m[k], base[k]))
        n = len(rounds[p["name"]])
        partial = "" if n == counts["rounds"] else f" ({n} of {counts['rounds']} rounds)"
        print(f"| {p['label']}{partial} | {ratio('calls_per_s')} | {fmt_num(m['p50_us'])} / "
              f"{fmt_num(m['p99_us'])} | {ratio('aggregate_calls_per_s')} | "
              f"{ratio('connects_per_s')} | {fmt_num(m['relay_cpu_us'])} | "
              f"{ratio('libvirtd_cpu_us')} |")
    print()
    print(f"Medians of {counts['rounds']} interleaved rounds; ratios vs direct. Tests: "
          f"(1) {counts['calls']} x getLibVersion() on one connection after a warm-up call, each "
          f"timed; (2) {counts['procs']} processes x {counts['proc_calls']} calls, own connection "
          f"each, started together; (3) {counts['connects']} x open+getLibVersion+close in "
          f"sequence; CPU = utime+stime of the process around test 1, per call.")
    print(f"Other processes used {other_s:.1f} CPU-s during the {wall:.0f} s of measurements "
          f"({100 * other_s / wall / os.cpu_count():.0f}% of {os.cpu_count()} cores; hypervisor "
          f"steal {steal_s:.1f} s); above a few % the numbers are skewed.")
    direct_rates = [r["calls_per_s"] for r in rounds.get("direct", [])]
    if len(direct_rates) > 1 and (max(direct_rates) - min(direct_rates)) > 0.1 * statistics.median(
            direct_rates):
        print(f"Warning: the direct path's 1 conn rate ranged {min(direct_rates):.0f}–"
              f"{max(direct_rates):.0f} calls/s over the rounds: the machine's speed changed "
              f"during the run (on a VM this happens with nothing visible inside it); medians may "
              f"mix fast and slow rounds. Rerun, or raise ROUNDS.")
    floor = med.get("passthrough")
    if floor and base.get("calls_per_s"):
        print(f"Floor: a hop that forwards the client's TLS bytes untouched (HAProxy in TCP "
              f"mode: no termination, no crypto) reaches "
              f"{floor['calls_per_s'] / base['calls_per_s']:.2f}× direct on one connection and "
              f"{floor['aggregate_calls_per_s'] / base['aggregate_calls_per_s']:.2f}× with "
              f"{counts['procs']}: the extra hop alone (two socket round trips, two wake-ups) "
              f"costs that before any TLS work.")
    vg, ha = med.get("virtgate"), med.get("haproxy")
    if vg and ha:
        def r(k):
            return ratio_of(vg, ha, k)
        print(f"virtgate / HAProxy: 1 conn calls/s {r('calls_per_s')}, p50 {r('p50_us')}, "
              f"p99 {r('p99_us')}, {counts['procs']} procs calls/s "
              f"{r('aggregate_calls_per_s')}, connects/s {r('connects_per_s')}, relay CPU per "
              f"call {r('relay_cpu_us')}, libvirtd CPU per call {r('libvirtd_cpu_us')}")
    else:
        vg_path = next((p for p in paths if p["name"] == "virtgate"), {})
        why = vg_path.get("unavailable") or "no successful round"
        print(f"virtgate / HAProxy: {why}")
    ag = med.get("agent")
    if vg and ag:
        def r(k):
            return ratio_of(ag, vg, k)
        added_ms = 1e3 / ag["connects_per_s"] - 1e3 / vg["connects_per_s"]
        print(f"agent / virtgate → libvirtd TLS: 1 conn calls/s {r('calls_per_s')}, p50 "
              f"{r('p50_us')}, {counts['procs']} procs calls/s {r('aggregate_calls_per_s')}, "
              f"connects/s {r('connects_per_s')} ({added_ms:+.2f} ms per connect: the PAKE check "
              f"and the agent's own TLS and UNIX-socket connect against libvirtd's TLS)")
    else:
        ag_path = next((p for p in paths if p["name"] == "agent"), {})
        if ag_path:
            why = ag_path.get("unavailable") or "no successful round"
            print(f"agent / virtgate → libvirtd TLS: {why}")
    hop = med.get("hop")
    if vg and hop:
        line = (f"Host-side hop floor: virtgate → TCP pass-through → libvirtd TLS reaches "
                f"{ratio_of(hop, vg, 'calls_per_s')} of virtgate → libvirtd TLS on one connection: "
                f"what any process between the network and libvirtd (an agent included) costs "
                f"before it does any work")
        if ag:
            line += (f"; the agent reaches {ratio_of(ag, hop, 'calls_per_s')} of that floor "
                     f"(relay CPU per call {ratio_of(ag, hop, 'relay_cpu_us')})")
        print(line + ".")
    if any(errors.values()):
        return 1
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "driver":
        return cmd_driver(args[0])
    if cmd == "single":
        cmd_single(args[0], int(args[1]), [int(p) for p in args[2:]])
    elif cmd == "worker":
        cmd_worker(args[0], int(args[1]))
    elif cmd == "connects":
        cmd_connects(args[0], int(args[1]))
    elif cmd == "probe":
        cmd_probe(args[0], float(args[1]), int(args[2]) if len(args) > 2 else None)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except KeyboardInterrupt:
        sys.exit(130)
