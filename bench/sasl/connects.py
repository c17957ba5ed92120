"""Connect rates (open + getLibVersion + close, one after another) for several paths, interleaved
in rounds so that they share the machine's state; prints a Markdown table of medians.

    connects.py N ROUNDS NAME=URI[@AUTHFILE] ...
"""
import json, os, statistics, sys, time
import libvirt

libvirt.registerErrorHandler(lambda *a: None, None)
CRED = [libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE]


def no_prompt(creds, data):
    return -1  # every credential comes from the auth file


def connects(uri, auth_file, n):
    if auth_file:
        os.environ["LIBVIRT_AUTH_FILE"] = auth_file
    else:
        os.environ.pop("LIBVIRT_AUTH_FILE", None)
    start = time.perf_counter()
    for _ in range(n):
        c = libvirt.openAuth(uri, [CRED, no_prompt, None], 0)
        c.getLibVersion()
        c.close()
    return n / (time.perf_counter() - start)


def main():
    n, rounds = int(sys.argv[1]), int(sys.argv[2])
    paths = []
    for arg in sys.argv[3:]:
        name, rest = arg.split("=", 1)
        uri, _, auth = rest.partition("@@")
        paths.append((name, uri, auth or None))
    results = {name: [] for name, _, _ in paths}
    for name, uri, auth in paths:  # warm-up: one connect each (TOFU pins, first SCRAM login)
        connects(uri, auth, 1)
    for _ in range(rounds):
        for name, uri, auth in paths:
            results[name].append(connects(uri, auth, n))
    base = statistics.median(results[paths[0][0]])
    print("| path | connects/s (median of %d rounds × %d) | ms per connect | vs first row |" % (rounds, n))
    print("| --- | --- | --- | --- |")
    for name, _, _ in paths:
        m = statistics.median(results[name])
        print(f"| {name} | {m:,.0f} | {1000 / m:.1f} | {m / base:.2f}× |")
    print(json.dumps(results), file=sys.stderr)


main()
