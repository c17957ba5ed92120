//! The gateway tier on one machine, as it runs behind a Kubernetes Service: one broker over
//! HTTPS (the gateways verify it by its CA and present their backend certificate), several
//! `virtgate proxy` processes following it, a real libvirtd as the hosts, real virsh and
//! python3-libvirt as the clients. Each gateway keeps serving through a broker outage, a
//! gateway restarted during the outage serves from its cache file, an approval made after the
//! broker returns reaches every gateway, SIGTERM drains, and certificate files replaced in place
//! are served to new connections without one failed call.
#![allow(clippy::disallowed_types)] // synchronous test code: std's clock is the right one

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::gateway::{identity, text, virsh, virsh_until, Identity, ProxySetup};
use common::{sample, Broker, BrokerCert};
use virtgate_testlab::libvirtd::{Libvirtd, LibvirtdOptions};
use virtgate_testlab::LabProcess;

const RULES: &str = r#"
[[proxy.rules]]
identity = "*CN=alice"
hosts = ["*"]
mode = "rw"
"#;

/// A broker beyond loopback over HTTPS that knows h1 and h2 (both the one libvirtd) and accepts
/// gateways by the CA of their backend certificates.
fn broker(dir: &Path, libvirtd: &Libvirtd) -> (Broker, BrokerCert) {
    let cert = BrokerCert::new(dir);
    let proxies_ca = dir.join("proxies-ca.pem");
    std::fs::write(&proxies_ca, libvirtd.ca().cert_pem()).unwrap();
    let hosts: String = ["h1", "h2"]
        .iter()
        .map(|name| {
            format!(
                "[[broker.hosts]]\nname = \"{name}\"\naddresses = [\"127.0.0.1\"]\nport = {}\n",
                libvirtd.port()
            )
        })
        .collect();
    let broker = Broker::start_beyond_loopback(
        dir,
        &cert,
        &format!(
            "proxy_ca_files = [{:?}]\nprobe_interval = \"1s\"\n{hosts}",
            proxies_ca.display().to_string()
        ),
    );
    for name in ["h1", "h2"] {
        broker.wait_host(name, Duration::from_secs(15), |h| h["trust"] == "pending");
    }
    (broker, cert)
}

/// `virtgate proxy` named `name`, following `broker` over HTTPS verified by its CA; `extra` goes
/// into its `[proxy]` section.
fn gateway(dir: &Path, name: &str, libvirtd: &Libvirtd, extra: &str) -> ProxySetup {
    ProxySetup::write(dir, name, libvirtd, None, &format!("{extra}\n{RULES}"))
}

fn follow_args(broker: &Broker, cert: &BrokerCert) -> [String; 4] {
    [
        "--broker".into(),
        format!("https://127.0.0.1:{}", broker.addr.port()),
        "--broker-ca".into(),
        cert.ca_file.display().to_string(),
    ]
}

fn start(setup: &ProxySetup, args: &[String]) -> LabProcess {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    setup.start(&args)
}

fn metrics_addr(setup: &ProxySetup) -> SocketAddr {
    format!("127.0.0.1:{}", setup.metrics_port).parse().unwrap()
}

fn get(setup: &ProxySetup, path: &str) -> (u16, String) {
    common::http_within(
        metrics_addr(setup),
        Duration::from_secs(5),
        "GET",
        path,
        None,
        None,
    )
    .unwrap_or((0, String::new()))
}

fn wait_ready(setup: &ProxySetup, proxy: &LabProcess) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(setup, "/readyz").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "gateway never ready: {:?}\n{}",
            get(setup, "/readyz"),
            proxy.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metric(setup: &ProxySetup, name: &str) -> f64 {
    let body = get(setup, "/metrics").1;
    sample(&body, name, &[]).unwrap_or_else(|| panic!("no {name} in:\n{body}"))
}

/// `virtgate proxy --check` with the gateway's configuration.
fn check(setup: &ProxySetup, args: &[String]) -> std::process::Output {
    Command::new(common::VIRTGATE)
        .args([
            "--config",
            setup.config.to_str().unwrap(),
            "proxy",
            "--check",
        ])
        .args(args)
        .output()
        .unwrap()
}

fn works(setup: &ProxySetup, host: &str, who: &Identity) -> std::process::Output {
    virsh_until(
        &setup.uri(host, who),
        &["list", "--all"],
        Duration::from_secs(20),
        |out| out.status.success(),
    )
}

/// One broker, two gateways (the first keeps a cache file); the broker dies: both keep
/// serving the approved host (and still refuse the pending one), stay ready, and show the
/// outage in their metrics; the first, restarted during the outage, serves from its cache at
/// once, while a new gateway without a cache stays unready; the broker returns, h2 is approved,
/// and both gateways serve it.
#[test]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
fn gateways_serve_through_a_broker_outage_and_all_see_an_approval_made_after_it() {
    let libvirtd = Libvirtd::start(LibvirtdOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (broker, cert) = broker(dir.path(), &libvirtd);
    let approved = common::approve_shown_pin(|args| broker.cli(args), "h1");
    assert!(approved.status.success(), "{}", text(&approved));
    let args = follow_args(&broker, &cert);
    let cache = dir.path().join("a-inventory.json");
    let a = gateway(
        dir.path(),
        "a",
        &libvirtd,
        &format!("directory_cache_file = {:?}", cache.display().to_string()),
    );
    let b = gateway(dir.path(), "b", &libvirtd, "");
    let mut proxy_a = start(&a, &args);
    let proxy_b = start(&b, &args);
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    for (setup, proxy) in [(&a, &proxy_a), (&b, &proxy_b)] {
        wait_ready(setup, proxy);
        let listed = works(setup, "h1", &alice);
        assert!(listed.status.success(), "{}", text(&listed));
    }
    assert_eq!(metric(&a, "virtgate_proxy_directory_hosts"), 2.0);
    assert!(cache.is_file(), "the first copy is kept in the cache file");
    // `helm test` runs this: a gateway's way to the broker, once.
    let checked = check(&b, &args);
    assert!(
        checked.status.success() && text(&checked).contains("2 hosts, 1 trusted"),
        "{}",
        text(&checked)
    );

    // The broker dies.
    let Broker {
        mut process,
        config,
        data_dir,
        tls,
        addr,
    } = broker;
    process.kill9();
    process.wait_timeout(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&b, "virtgate_proxy_broker_follow_errors_total") < 1.0 {
        assert!(Instant::now() < deadline, "{}", proxy_b.stderr_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let synced = metric(&b, "virtgate_proxy_directory_last_sync_timestamp_seconds");
    for setup in [&a, &b] {
        assert_eq!(get(setup, "/readyz").0, 200, "ready through the outage");
        let listed = virsh(&setup.uri("h1", &alice), &["list", "--all"]);
        assert!(listed.status.success(), "{}", text(&listed));
        let pending = virsh(&setup.uri("h2", &alice), &["list"]);
        assert!(
            text(&pending).contains("is not trusted yet"),
            "{}",
            text(&pending)
        );
    }
    let checked = check(&b, &args);
    assert!(
        !checked.status.success()
            && text(&checked).contains("cannot read the inventory of the broker"),
        "{}",
        text(&checked)
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        metric(&b, "virtgate_proxy_directory_last_sync_timestamp_seconds"),
        synced,
        "no sync while the broker is away"
    );
    assert!(synced > 1.0e9, "{synced}");
    // The staleness series pass promtool's exposition checks (tests/dashboards.rs lists them).
    let scrape = get(&b, "/metrics").1;
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; ./scripts/test.sh installs it)");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let checked = check.wait_with_output().unwrap();
    assert!(checked.status.success(), "{}", text(&checked));

    // Restarted during the outage: the gateway with a cache serves at once.
    proxy_a.stop(Duration::from_secs(10));
    let proxy_a = start(&a, &args);
    wait_ready(&a, &proxy_a);
    let listed = virsh(&a.uri("h1", &alice), &["list", "--all"]);
    assert!(
        listed.status.success(),
        "{}\n{}",
        text(&listed),
        proxy_a.stderr_text()
    );
    assert!(
        metric(&a, "virtgate_proxy_directory_last_sync_timestamp_seconds") > 1.0e9,
        "the cached copy's time is the last sync"
    );
    // A new gateway without a cache has nothing to serve: not ready, every host unknown.
    let c = gateway(dir.path(), "c", &libvirtd, "");
    let proxy_c = start(&c, &args);
    let (status, body) = get(&c, "/readyz");
    assert_eq!(
        (status, body.trim()),
        (503, "waiting for the broker's inventory")
    );
    let unknown = virsh(&c.uri("h1", &alice), &["list"]);
    assert!(
        text(&unknown).contains("unknown host h1"),
        "{}",
        text(&unknown)
    );
    assert_eq!(
        metric(&c, "virtgate_proxy_directory_last_sync_timestamp_seconds"),
        0.0
    );

    // The broker returns; h2 is approved; every gateway serves it.
    let broker = Broker {
        process,
        config,
        data_dir,
        tls,
        addr,
    }
    .restart();
    let approved = common::approve_shown_pin(|args| broker.cli(args), "h2");
    assert!(approved.status.success(), "{}", text(&approved));
    for (setup, proxy) in [(&a, &proxy_a), (&b, &proxy_b), (&c, &proxy_c)] {
        let listed = works(setup, "h2", &alice);
        assert!(
            listed.status.success(),
            "h2 approved after the outage: {}\n{}",
            text(&listed),
            proxy.stderr_text()
        );
    }
    wait_ready(&c, &proxy_c);
}

/// Calls for `seconds` on one connection opened before `go` is read from stdin; prints the
/// calls answered and the errors.
const PY_CALLS_AFTER_GO: &str = r#"
import libvirt, os, sys, time
libvirt.registerErrorHandler(lambda *a: None, None)
c = libvirt.open(os.environ["URI"])
c.getLibVersion()
print("open", flush=True)
sys.stdin.readline()
answered, errors, until = 0, 0, time.time() + float(sys.argv[1])
while time.time() < until:
    try:
        c.getLibVersion(); answered += 1
    except libvirt.libvirtError:
        errors += 1
print(answered, errors, flush=True)
try:
    c.close()
except libvirt.libvirtError:
    pass
"#;

fn session_after_go(setup: &ProxySetup, who: &Identity, seconds: &str) -> std::process::Child {
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", PY_CALLS_AFTER_GO, seconds])
        .env("URI", setup.uri("h1", who))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "open");
    child
}

/// SIGTERM: the gateway stops accepting and says so on /readyz; a session open at the signal
/// goes on making calls, every one answered, and the gateway exits once it has ended. An idle
/// session is closed when proxy.drain_timeout passes, and a second signal ends the drain at once.
#[test]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
fn a_gateway_stopped_with_sigterm_finishes_the_calls_of_open_sessions_first() {
    let libvirtd = Libvirtd::start(LibvirtdOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (broker, cert) = broker(dir.path(), &libvirtd);
    let approved = common::approve_shown_pin(|args| broker.cli(args), "h1");
    assert!(approved.status.success(), "{}", text(&approved));
    let args = follow_args(&broker, &cert);
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");

    let patient = gateway(dir.path(), "patient", &libvirtd, "drain_timeout = \"30s\"");
    let mut proxy = start(&patient, &args);
    wait_ready(&patient, &proxy);
    assert!(works(&patient, "h1", &alice).status.success());
    let mut session = session_after_go(&patient, &alice, "3");
    let signalled = Instant::now();
    proxy.terminate();
    proxy
        .wait_for_stderr("draining", Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("{}", proxy.stderr_text()));
    writeln!(session.stdin.take().unwrap()).unwrap();
    let (status, body) = get(&patient, "/readyz");
    assert_eq!(
        (status, body.trim()),
        (503, "draining: this gateway is stopping")
    );
    let refused = virsh(&patient.uri("h1", &alice), &["list"]);
    assert!(
        !refused.status.success(),
        "no new connection while draining"
    );
    let mut report = String::new();
    BufReader::new(session.stdout.take().unwrap())
        .read_line(&mut report)
        .unwrap();
    session.wait().unwrap();
    let counts: Vec<u64> = report
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(
        counts[0] > 10 && counts[1] == 0,
        "every call after the signal answered: {report}\n{}",
        proxy.stderr_text()
    );
    let exit = proxy.wait_timeout(Duration::from_secs(10));
    assert!(
        exit.is_some_and(|s| s.success()),
        "exits cleanly once the session ended: {exit:?}\n{}",
        proxy.stderr_text()
    );
    assert!(signalled.elapsed() < Duration::from_secs(15));
    assert!(
        proxy
            .stderr_text()
            .contains("drained: every session has ended"),
        "{}",
        proxy.stderr_text()
    );

    // An idle session and a short drain: closed when the time is up.
    let brief = gateway(dir.path(), "brief", &libvirtd, "drain_timeout = \"1s\"");
    let mut proxy = start(&brief, &args);
    wait_ready(&brief, &proxy);
    let mut idle = session_after_go(&brief, &alice, "1");
    proxy.terminate();
    let exit = proxy.wait_timeout(Duration::from_secs(10));
    assert!(exit.is_some_and(|s| s.success()), "{}", proxy.stderr_text());
    assert!(
        proxy
            .stderr_text()
            .contains("proxy.drain_timeout has passed; closing the sessions still open"),
        "{}",
        proxy.stderr_text()
    );
    writeln!(idle.stdin.take().unwrap()).unwrap();
    let mut report = String::new();
    BufReader::new(idle.stdout.take().unwrap())
        .read_line(&mut report)
        .unwrap();
    idle.wait().unwrap();
    assert!(report.starts_with("0 "), "the session was closed: {report}");

    // A second signal does not wait for the drain.
    let mut proxy = start(&patient, &args);
    wait_ready(&patient, &proxy);
    let mut held = session_after_go(&patient, &alice, "1");
    proxy.terminate();
    proxy
        .wait_for_stderr("draining", Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("{}", proxy.stderr_text()));
    let second = Instant::now();
    proxy.terminate();
    let exit = proxy.wait_timeout(Duration::from_secs(10));
    assert!(exit.is_some_and(|s| s.success()), "{}", proxy.stderr_text());
    assert!(
        second.elapsed() < Duration::from_secs(8),
        "{:?}",
        second.elapsed()
    );
    let _ = held.kill();
    let _ = held.wait();
}

/// Clients for `seconds`: three threads opening a connection after another (five calls each)
/// and one connection calling all along; prints the calls answered and the failures.
const PY_LOAD: &str = r#"
import libvirt, os, sys, threading, time
libvirt.registerErrorHandler(lambda *a: None, None)
uri, until = os.environ["URI"], time.time() + float(sys.argv[1])
lock, answered, failures = threading.Lock(), [0], []
def count(n):
    with lock: answered[0] += n
def fail(e):
    with lock: failures.append(str(e))
def fresh():
    while time.time() < until:
        try:
            c = libvirt.open(uri)
            for _ in range(5): c.getLibVersion()
            c.close(); count(5)
        except libvirt.libvirtError as e:
            fail(e)
def long_lived():
    c = libvirt.open(uri)
    while time.time() < until:
        try:
            c.getLibVersion(); count(1)
        except libvirt.libvirtError as e:
            fail(e)
    c.close()
threads = [threading.Thread(target=fresh) for _ in range(3)] + [threading.Thread(target=long_lived)]
for t in threads: t.start()
for t in threads: t.join()
print(answered[0], len(failures))
for f in failures[:5]: print(f)
"#;

/// The DER of the certificate the gateway presents now, as a client with `who`'s bundle sees it.
const PY_PEER_CERT: &str = r#"
import hashlib, os, socket, ssl
pki = os.environ["PKI"]
ctx = ssl.create_default_context(cafile=pki + "/cacert.pem")
ctx.load_cert_chain(pki + "/clientcert.pem", pki + "/clientkey.pem")
with socket.create_connection(("127.0.0.1", int(os.environ["PORT"]))) as raw:
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        print(hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest())
"#;

fn presented_sha256(setup: &ProxySetup, who: &Identity) -> String {
    let out = Command::new("/usr/bin/python3")
        .args(["-c", PY_PEER_CERT])
        .env("PKI", &who.pki)
        .env("PORT", setup.port.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Writes a fresh server certificate into a new directory and swaps the `current` link to it
/// with one rename, as the kubelet updates a mounted Secret; returns the certificate's SHA-256.
fn rotate(tls_dir: &Path, libvirtd: &Libvirtd, round: u32) -> String {
    let issued = libvirtd
        .ca()
        .issue_server(&virtgate_testlab::pki::ServerCertSpec::localhost())
        .unwrap();
    let version = tls_dir.join(format!("..{round}"));
    std::fs::create_dir_all(&version).unwrap();
    std::fs::write(version.join("tls.crt"), &issued.cert_pem).unwrap();
    virtgate_testlab::pki::write_file(&version.join("tls.key"), &issued.key_pem, 0o600).unwrap();
    let link = tls_dir.join("..new");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(format!("..{round}"), &link).unwrap();
    std::fs::rename(&link, tls_dir.join("current")).unwrap();
    let der = virtgate_pki::read_certs(&version.join("tls.crt")).unwrap();
    sha256_hex(der[0].as_ref())
}

fn sha256_hex(bytes: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(bytes)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// The gateway's certificate files are replaced three times, in place, while clients open
/// connections and make calls all along: new connections get the new certificate within
/// proxy.tls_reload_interval, no call fails, and nobody sent SIGHUP.
#[test]
fn certificate_files_replaced_in_place_reach_new_connections_without_a_failed_call() {
    let libvirtd = Libvirtd::start(LibvirtdOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (broker, cert) = broker(dir.path(), &libvirtd);
    let approved = common::approve_shown_pin(|args| broker.cli(args), "h1");
    assert!(approved.status.success(), "{}", text(&approved));
    let tls_dir = dir.path().join("server-tls");
    rotate(&tls_dir, &libvirtd, 0);
    let setup = gateway(
        dir.path(),
        "rotating",
        &libvirtd,
        "tls_reload_interval = \"200ms\"",
    );
    let current = |file: &str| tls_dir.join("current").join(file).display().to_string();
    let config = std::fs::read_to_string(&setup.config).unwrap();
    let server_files = |name: &str| dir.path().join(name).display().to_string();
    let config = config
        .replace(&server_files("rotating-cert.pem"), &current("tls.crt"))
        .replace(&server_files("rotating-key.pem"), &current("tls.key"));
    std::fs::write(&setup.config, config).unwrap();
    let proxy = start(&setup, &follow_args(&broker, &cert));
    wait_ready(&setup, &proxy);
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    assert!(works(&setup, "h1", &alice).status.success());

    let load = Command::new("/usr/bin/python3")
        .args(["-c", PY_LOAD, "8"])
        .env("URI", setup.uri("h1", &alice))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut served = Vec::new();
    for round in 1..=3 {
        std::thread::sleep(Duration::from_millis(1500));
        let want = rotate(&tls_dir, &libvirtd, round);
        let deadline = Instant::now() + Duration::from_secs(5);
        while presented_sha256(&setup, &alice) != want {
            assert!(
                Instant::now() < deadline,
                "round {round}: the new certificate is not served\n{}",
                proxy.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        served.push(want);
    }
    let out = load.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    let counts: Vec<u64> = report
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(
        counts.len() == 2 && counts[0] > 100 && counts[1] == 0,
        "calls answered, failures: {report}\n{}",
        proxy.stderr_text()
    );
    assert_eq!(served.len(), 3);
    let log = proxy.stderr_text();
    assert!(
        log.matches("TLS files changed").count() >= 3 && !log.contains("SIGHUP"),
        "{log}"
    );
}
