//! The gateway with the real clients (virsh, python3-libvirt) and a real libvirtd over TLS.
#![allow(clippy::disallowed_types)] // synchronous test code: std's clock is the right one

mod common;

use std::time::Duration;

use common::fake_broker::{inventory_pointing_h1_at, FakeBroker};
use common::gateway::{
    assert_same_results_as_direct, identity, python, text, virsh, virsh_until, CallOnCue, Gateway,
    ProxySetup, PY_SUMMARY,
};
use common::raw::{raw_client, RAW_CONNECT, RAW_OPEN};
use common::tap::Tap;
use common::{sample, Broker, BrokerCert};
use virtgate_testlab::libvirtd::{Libvirtd, LibvirtdOptions};

const RULES: &str = r#"
[[proxy.rules]]
identity = "*CN=alice"
hosts = ["*"]
mode = "rw"
[[proxy.rules]]
identity = "*CN=bob"
hosts = ["h1", "h6"]
mode = "ro"
"#;

fn host(name: &str, addresses: &[&str], port: u16) -> String {
    let list: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[[broker.hosts]]\nname = \"{name}\"\naddresses = [{}]\nport = {port}\n",
        list.join(", ")
    )
}

/// A gateway in front of `libvirtd` as host h1 (at `port`), with h1's key approved.
fn gateway_with_h1(dir: &std::path::Path, libvirtd: &Libvirtd, port: u16) -> Gateway {
    let gw = Gateway::start(
        dir,
        libvirtd,
        &format!("{}{RULES}", host("h1", &["127.0.0.1"], port)),
    );
    gw.wait_trust("h1", "pending");
    gw.approve("h1");
    gw
}

fn libvirtd() -> Libvirtd {
    Libvirtd::start(LibvirtdOptions::default()).unwrap()
}

const PY_OPEN_ERROR: &str = r#"
import libvirt, os
libvirt.registerErrorHandler(lambda *a: None, None)
try:
    libvirt.open(os.environ["URI"])
    print("opened")
except libvirt.libvirtError as e:
    print(e.get_error_code(), e.get_error_message())
"#;

#[test]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
fn virsh_and_python_get_the_same_results_through_the_gateway_as_directly() {
    let libvirtd = libvirtd();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_with_h1(dir.path(), &libvirtd, libvirtd.port());
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    let via = gw.uri("127.0.0.1", "h1", &alice);

    assert_same_results_as_direct(&libvirtd, &via, dir.path(), &String::new);
    assert!(String::from_utf8_lossy(&virsh(&via, &["list", "--all"]).stdout).contains("test"));

    let metrics = gw.metrics();
    assert!(
        sample(
            &metrics,
            "virtgate_proxy_rpc_calls_total",
            &[("host", "h1"), ("procedure", "DOMAIN_SUSPEND")]
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        sample(
            &metrics,
            "virtgate_proxy_rpc_calls_total",
            &[("host", "h1"), ("procedure", "CONNECT_GET_LIB_VERSION")]
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        sample(
            &metrics,
            "virtgate_proxy_bytes_total",
            &[("host", "h1"), ("direction", "to_client")]
        )
        .unwrap()
            > 1000.0
    );
    assert!(
        sample(
            &metrics,
            "virtgate_proxy_connections_total",
            &[("result", "closed")]
        )
        .unwrap()
            >= 8.0
    );
    assert!(metrics.contains("virtgate_proxy_rpc_duration_seconds_count{host=\"h1\"}"));
    assert!(sample(
        &metrics,
        "virtgate_cert_not_after_timestamp_seconds",
        &[("role", "proxy_server")]
    )
    .is_some());
}

#[test]
fn lifecycle_events_reach_a_virsh_event_loop_through_the_gateway() {
    let libvirtd = libvirtd();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_with_h1(dir.path(), &libvirtd, libvirtd.port());
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    let via = gw.uri("127.0.0.1", "h1", &alice);
    let mut cmd = std::process::Command::new("/usr/bin/virsh");
    cmd.args(["-c", &via, "event", "--all", "--loop"]);
    let events = virtgate_testlab::LabProcess::spawn(cmd).unwrap();
    std::thread::sleep(Duration::from_millis(1500)); // registration round trip

    assert!(libvirtd
        .virsh(&["suspend", "test"])
        .unwrap()
        .status
        .success());
    let (_, line) = events
        .wait_for_line(Duration::from_secs(10), |l| {
            l.contains("lifecycle") && l.contains("Suspended")
        })
        .expect("suspend event relayed");
    assert!(line.contains("'test'"), "{line}");
    assert!(libvirtd
        .virsh(&["resume", "test"])
        .unwrap()
        .status
        .success());
    events
        .wait_for_line(Duration::from_secs(10), |l| {
            l.contains("lifecycle") && l.contains("Resumed")
        })
        .expect("resume event relayed");
}

#[test]
fn read_only_identities_cannot_write_and_others_are_denied_with_a_message() {
    let libvirtd = libvirtd();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_with_h1(dir.path(), &libvirtd, libvirtd.port());
    let bob = identity(&libvirtd, "bob", "C=GB,O=virtgate-test,CN=bob");
    let carol = identity(&libvirtd, "carol", "C=GB,O=virtgate-test,CN=carol");

    let listed = virsh(&gw.uri("127.0.0.1", "h1", &bob), &["list", "--all"]);
    assert!(listed.status.success(), "ro may read: {}", text(&listed));
    let write = virsh(
        &gw.uri("127.0.0.1", "h1", &bob),
        &["suspend test; domstate test"],
    );
    assert!(
        text(&write).contains("read only access prevents virDomainSuspend"),
        "{}",
        text(&write)
    );
    assert!(
        String::from_utf8_lossy(&write.stdout).contains("running"),
        "still running: {}",
        text(&write)
    );

    let denied = virsh(&gw.uri("127.0.0.1", "h1", &carol), &["list"]);
    assert!(!denied.status.success());
    assert!(
        text(&denied).contains(
            "virtgate: access to host h1 denied for CN=carol (C=GB,O=virtgate-test,CN=carol: no proxy.rules entry allows it)"
        ),
        "the full subject, which rules match, is shown: {}",
        text(&denied)
    );
    let py = python(&gw.uri("127.0.0.1", "h1", &carol), PY_OPEN_ERROR);
    assert!(
        String::from_utf8_lossy(&py.stdout)
            .contains("virtgate: access to host h1 denied for CN=carol"),
        "{}",
        text(&py)
    );
    assert!(
        sample(
            &gw.metrics(),
            "virtgate_proxy_auth_failures_total",
            &[("stage", "policy"), ("reason", "denied")]
        )
        .unwrap()
            >= 2.0
    );
    // The log reads as text: addresses without Rust's `Some(…)`, durations to a tenth of a ms.
    let log = gw.process.stderr_text();
    assert!(
        log.contains("proxy listening") && !log.contains("Some("),
        "{log}"
    );
    let durations: Vec<&str> = log
        .split("took_ms=")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert!(!durations.is_empty(), "{log}");
    for took in durations {
        let decimals = took.split('.').nth(1).map_or(0, str::len);
        assert!(decimals <= 1, "took_ms={took}");
    }
}

#[test]
fn unknown_pending_unreachable_and_hostless_connections_get_clear_errors() {
    let libvirtd = libvirtd();
    let dir = tempfile::tempdir().unwrap();
    let dead = common::free_port();
    let hosts = format!(
        "{}{}{}",
        host("h1", &["127.0.0.1"], libvirtd.port()),
        host("h2", &["127.0.0.1"], libvirtd.port()),
        host("hdown", &["127.0.0.1"], dead)
    );
    let gw = Gateway::start(dir.path(), &libvirtd, &format!("{hosts}{RULES}"));
    gw.wait_trust("h2", "pending");
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");

    let unknown = virsh(&gw.uri("127.0.0.1", "h9", &alice), &["list"]);
    assert!(
        text(&unknown).contains("virtgate: unknown host h9"),
        "{}",
        text(&unknown)
    );
    let pending = virsh(&gw.uri("127.0.0.1", "h2", &alice), &["list"]);
    assert!(
        text(&pending).contains("virtgate: host h2 is not trusted yet")
            && text(&pending).contains("virtgate hosts approve h2"),
        "{}",
        text(&pending)
    );
    let down = virsh(&gw.uri("127.0.0.1", "hdown", &alice), &["list"]);
    assert!(
        text(&down).contains("virtgate: host hdown is unreachable"),
        "{}",
        text(&down)
    );
    let hostless = format!(
        "test+tls://127.0.0.1:{}/default?pkipath={}",
        gw.port,
        alice.pki.display()
    );
    let hostless = virsh(&hostless, &["list"]);
    assert!(
        text(&hostless).contains("?name=DRIVER://HOST/PATH"),
        "{}",
        text(&hostless)
    );
    for out in [&unknown, &pending, &down, &hostless] {
        assert!(!out.status.success());
    }
}

#[test]
fn clients_not_authenticated_or_not_authorised_never_cause_a_host_connection() {
    let libvirtd = libvirtd();
    let tap = Tap::start(
        "127.0.0.1:0",
        format!("127.0.0.1:{}", libvirtd.port()).parse().unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_with_h1(dir.path(), &libvirtd, tap.addr.port());
    std::thread::sleep(Duration::from_millis(300));
    // The broker probes h1 through the tap every second; only those connections may appear.
    let probes = |gw: &Gateway| {
        sample(&gw.metrics(), "virtgate_probe_duration_seconds_count", &[]).unwrap_or(0.0) as usize
    };
    let before = tap.accepted();
    let probes_before = probes(&gw);
    let other_ca = Libvirtd::start(LibvirtdOptions::default()).unwrap();
    let mallory = identity(&other_ca, "mallory", "C=GB,O=virtgate-test,CN=alice");

    let no_cert = python(
        &format!("127.0.0.1:{}", gw.port),
        r#"
import os, socket, ssl
host, port = os.environ["URI"].split(":")
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
try:
    s = ctx.wrap_socket(socket.create_connection((host, int(port))))
    print("read", s.recv(1))
except Exception as e:
    print("refused", type(e).__name__)
"#,
    );
    let foreign = virsh(
        &format!(
            "test+tls://127.0.0.1:{}/default?name=test://h1/default&pkipath={}&no_sanity=1",
            gw.port,
            mallory.pki.display()
        ),
        &["list"],
    );

    // Authenticated but not authorised for h1: refused before any host connection too.
    let carol = identity(&libvirtd, "carol", "C=GB,O=virtgate-test,CN=carol");
    let denied = virsh(&gw.uri("127.0.0.1", "h1", &carol), &["list"]);
    assert!(
        text(&denied).contains("denied for CN=carol"),
        "{}",
        text(&denied)
    );

    assert!(
        !String::from_utf8_lossy(&no_cert.stdout).contains("read b'\\x01'"),
        "no 0x01 without a certificate: {}",
        text(&no_cert)
    );
    assert!(
        !foreign.status.success(),
        "a certificate from another CA is refused: {}",
        text(&foreign)
    );
    std::thread::sleep(Duration::from_millis(300));
    // Only the broker's periodic probes (1 s interval) may have reached the host: none of them
    // comes from these clients, so compare against the probe count.
    let after = tap.accepted();
    std::thread::sleep(Duration::from_millis(300)); // let a probe counted by the tap finish
    let probe_count = probes(&gw) - probes_before;
    assert!(
        after - before <= probe_count,
        "host connections {before}→{after} exceed the broker's probes in that time ({probe_count})"
    );
    let probes = gw.metrics();
    assert!(sample(
        &probes,
        "virtgate_proxy_auth_failures_total",
        &[("stage", "tls")]
    )
    .is_some());
    let refused: f64 = probes
        .lines()
        .filter(|l| {
            l.starts_with("virtgate_proxy_auth_failures_total{") && l.contains("stage=\"tls\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(refused >= 2.0, "both refusals counted:\n{probes}");
}

#[test]
fn a_host_presenting_a_key_other_than_its_pin_is_refused_with_a_clear_error() {
    let mut libvirtd = libvirtd();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_with_h1(dir.path(), &libvirtd, libvirtd.port());
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    let via = gw.uri("127.0.0.1", "h1", &alice);
    assert!(virsh(&via, &["list"]).status.success());

    libvirtd
        .restart_with_server_cert(virtgate_testlab::pki::ServerCertSpec::localhost())
        .unwrap();
    // Whether the gateway's own handshake catches the new key first or the broker's re-probe
    // marks the host `changed` first, the client is refused and told why.
    let refused = virsh(&via, &["list"]);
    assert!(!refused.status.success());
    let why = text(&refused);
    assert!(
        why.contains("is not its approved pin") || why.contains("differs from its approved pin"),
        "{why}"
    );
    gw.wait_trust("h1", "changed");
    let refused = virsh(&via, &["list"]);
    assert!(
        text(&refused)
            .contains("virtgate: host h1 presents a key that differs from its approved pin"),
        "{}",
        text(&refused)
    );

    gw.approve("h1");
    assert!(
        virsh(&via, &["list"]).status.success(),
        "re-approved host is reachable again"
    );
}

#[test]
fn works_with_the_client_on_ipv6_loopback_and_the_host_on_ipv6_loopback() {
    let libvirtd = libvirtd();
    assert!(libvirtd.has_ipv6(), "the lab libvirtd listens on ::1");
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        dir.path(),
        &libvirtd,
        &format!("{}{RULES}", host("h6", &["::1"], libvirtd.port())),
    );
    gw.wait_trust("h6", "pending");
    gw.approve("h6");
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");

    let via_v6 = gw.uri("[::1]", "h6", &alice);
    let listed = virsh(&via_v6, &["list", "--all"]);
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(String::from_utf8_lossy(&listed.stdout).contains("test"));
    let py = python(&via_v6, PY_SUMMARY);
    assert!(py.status.success(), "{}", text(&py));
    let via_v4 = gw.uri("127.0.0.1", "h6", &alice);
    assert!(
        virsh(&via_v4, &["list"]).status.success(),
        "IPv4 client to an IPv6-only host"
    );
}

#[test]
fn a_keepalive_enabled_virsh_session_stays_up_while_idle_for_60s() {
    let libvirtd = libvirtd();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_with_h1(dir.path(), &libvirtd, libvirtd.port());
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    let via = gw.uri("127.0.0.1", "h1", &alice);
    // virsh enables keepalive (5 s interval, 6 misses); libvirtd pings the client every 5 s once
    // it asked for the keepalive feature. Idle for 60 s, then use the same connection again.
    let script = format!(
        "(echo 'list --all'; sleep 62; echo 'list --all'; echo quit) | /usr/bin/virsh -c '{via}'"
    );
    let started = std::time::Instant::now();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(started.elapsed() >= Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.matches(" test ").count(),
        2,
        "both listings succeeded on one connection: {}",
        text(&out)
    );
    assert!(!text(&out).contains("error"), "{}", text(&out));
    let metrics = gw.metrics();
    assert!(
        sample(
            &metrics,
            "virtgate_proxy_rpc_calls_total",
            &[("procedure", "CONNECT_LIST_ALL_DOMAINS")]
        )
        .unwrap()
            >= 2.0
    );
}

#[test]
fn a_host_that_goes_away_mid_call_gives_the_client_an_error_not_a_hang() {
    let libvirtd = libvirtd();
    let tap = Tap::start(
        "127.0.0.1:0",
        format!("127.0.0.1:{}", libvirtd.port()).parse().unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_with_h1(dir.path(), &libvirtd, tap.addr.port());
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    let mut client = CallOnCue::open(&gw.uri("127.0.0.1", "h1", &alice));
    tap.swallow(); // the next call reaches nobody…
    client.call();
    std::thread::sleep(Duration::from_millis(500));
    tap.cut_all(); // …and then the host's connection dies.
    let rest = client.outcome();

    assert!(
        rest.contains("virtgate: host h1 closed the connection while this call was in progress"),
        "{rest}"
    );
}

#[test]
fn garbage_and_oversized_frames_are_cut_off_and_the_gateway_stays_up() {
    let libvirtd = libvirtd();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_with_h1(dir.path(), &libvirtd, libvirtd.port());
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    let raw = r#"
import os, socket, ssl, struct
pki = os.environ["PKI"]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False
ctx.load_verify_locations(pki + "/cacert.pem")
ctx.load_cert_chain(pki + "/clientcert.pem", pki + "/clientkey.pem")
for payload in [struct.pack(">I", 2) + b"xx", struct.pack(">I", 33554437) + b"\0" * 24, struct.pack(">I", 1 << 20) + b"\0" * 24]:
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(os.environ["PORT"]))))
    assert s.recv(1) == b"\x01"
    s.sendall(payload)
    s.settimeout(5)
    try:
        data = s.recv(100)
        print("closed" if data == b"" else "data")
    except (ConnectionResetError, ssl.SSLError):
        print("closed")
"#;
    let out = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(raw)
        .env("PKI", &alice.pki)
        .env("PORT", gw.port.to_string())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        vec!["closed"; 3],
        "{}",
        text(&out)
    );

    let metrics = gw.metrics();
    for reason in [
        "length_too_small",
        "length_too_large",
        "too_large_before_open",
    ] {
        assert_eq!(
            sample(
                &metrics,
                "virtgate_proxy_protocol_errors_total",
                &[("side", "client"), ("reason", reason)]
            ),
            Some(1.0),
            "{reason}"
        );
    }
    assert!(
        virsh(&gw.uri("127.0.0.1", "h1", &alice), &["list"])
            .status
            .success(),
        "still serving"
    );
}

#[test]
fn a_separate_proxy_follows_the_brokers_inventory_over_the_watch_api() {
    let libvirtd = libvirtd();
    let dir = tempfile::tempdir().unwrap();
    // Reuse the gateway's config file, but run its two halves as separate processes.
    let gw = Gateway::start(
        dir.path(),
        &libvirtd,
        &format!("{}{RULES}", host("h1", &["127.0.0.1"], libvirtd.port())),
    );
    gw.wait_trust("h1", "pending");
    let config = gw.config.clone();
    let api = gw.api;
    drop(gw);
    let _broker = common::gateway::broker_alone(&config, api);
    let port = common::free_port();
    let metrics_port = common::free_port();
    // `virtgate broker` on loopback speaks plain HTTP; the data directory still holds the API
    // certificate the `up` above made, so the URL is given.
    let plain = format!("http://{api}");
    let mut proxy_cmd = std::process::Command::new(common::VIRTGATE);
    proxy_cmd
        .args([
            "--config",
            config.to_str().unwrap(),
            "proxy",
            "--broker",
            &plain,
        ])
        .env("VIRTGATE_PROXY__LISTEN", format!("[\"127.0.0.1:{port}\"]"))
        .env(
            "VIRTGATE_PROXY__METRICS_LISTEN",
            format!("127.0.0.1:{metrics_port}"),
        );
    let mut proxy = virtgate_testlab::LabProcess::spawn(proxy_cmd).unwrap();
    proxy
        .wait_for_stderr("proxy started", Duration::from_secs(10))
        .unwrap();
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    let via = format!(
        "test+tls://127.0.0.1:{port}/default?name=test://h1/default&pkipath={}",
        alice.pki.display()
    );

    let pending = virsh(&via, &["list"]);
    assert!(
        text(&pending).contains("is not trusted yet"),
        "{}",
        text(&pending)
    );
    let run = |args: &[&str]| {
        std::process::Command::new(common::VIRTGATE)
            .args(["--config", config.to_str().unwrap()])
            .args(args)
            .args(["--broker", &plain])
            .output()
            .unwrap()
    };
    let out = common::approve_shown_pin(run, "h1");
    assert!(out.status.success(), "{}", text(&out));
    // The proxy learns of the approval through the long-poll, without restarting.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let listed = virsh(&via, &["list", "--all"]);
        if listed.status.success() {
            assert!(String::from_utf8_lossy(&listed.stdout).contains("test"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "approval never reached the proxy: {}",
            text(&listed)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = common::http(
        format!("127.0.0.1:{metrics_port}").parse().unwrap(),
        "GET",
        "/metrics",
        None,
        None,
    )
    .unwrap()
    .1;
    assert!(
        sample(
            &metrics,
            "virtgate_proxy_rpc_calls_total",
            &[("host", "h1"), ("procedure", "CONNECT_LIST_ALL_DOMAINS")]
        )
        .is_some(),
        "{metrics}"
    );
}

#[test]
fn a_port_bound_to_one_host_and_the_default_host_route_clients_that_name_no_host() {
    let libvirtd = libvirtd();
    let dir = tempfile::tempdir().unwrap();
    let bound = common::free_port();
    let gw = Gateway::start(
        dir.path(),
        &libvirtd,
        &format!(
            "default_host = \"h1\"\n[[proxy.host_listeners]]\nlisten = \"127.0.0.1:{bound}\"\nhost = \"h2\"\n{}{}{RULES}",
            host("h1", &["127.0.0.1"], libvirtd.port()),
            host("h2", &["::1"], libvirtd.port())
        ),
    );
    for h in ["h1", "h2"] {
        gw.wait_trust(h, "pending");
        gw.approve(h);
    }
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");

    // No ?name= at all: the client's own name is test:///default.
    let plain = |port: u16| {
        format!(
            "test+tls://127.0.0.1:{port}/default?pkipath={}",
            alice.pki.display()
        )
    };
    let via_default = virsh(&plain(gw.port), &["list", "--all"]);
    let via_bound = virsh(&plain(bound), &["list", "--all"]);
    assert!(via_default.status.success(), "{}", text(&via_default));
    assert!(via_bound.status.success(), "{}", text(&via_bound));
    let metrics = gw.metrics();
    for h in ["h1", "h2"] {
        assert!(
            sample(
                &metrics,
                "virtgate_proxy_rpc_calls_total",
                &[("host", h), ("procedure", "CONNECT_LIST_ALL_DOMAINS")]
            )
            .is_some(),
            "{h} was used"
        );
    }
}

#[test]
fn a_revoked_client_certificate_is_refused() {
    let libvirtd = libvirtd();
    let dir = tempfile::tempdir().unwrap();
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    let dave = identity(&libvirtd, "dave", "C=GB,O=virtgate-test,CN=dave");
    let pem = std::fs::read(dave.pki.join("clientcert.pem")).unwrap();
    let (_, der) = virtgate_pki::x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let serial = der.parse_x509().unwrap().raw_serial().to_vec();
    let crl = dir.path().join("crl.pem");
    std::fs::write(&crl, libvirtd.ca().crl(&[serial]).unwrap()).unwrap();
    let rules = format!(
        "{RULES}[[proxy.rules]]\nidentity = \"*CN=dave\"\nhosts = [\"*\"]\nmode = \"rw\"\n"
    );
    let gw = Gateway::start(
        dir.path(),
        &libvirtd,
        &format!(
            "crl_file = {:?}\n{}{rules}",
            crl.display().to_string(),
            host("h1", &["127.0.0.1"], libvirtd.port())
        ),
    );
    gw.wait_trust("h1", "pending");
    gw.approve("h1");

    let revoked = virsh(&gw.uri("127.0.0.1", "h1", &dave), &["list"]);
    assert!(!revoked.status.success(), "{}", text(&revoked));
    assert!(virsh(&gw.uri("127.0.0.1", "h1", &alice), &["list"])
        .status
        .success());
    assert!(
        gw.metrics()
            .lines()
            .any(|l| l.starts_with("virtgate_proxy_auth_failures_total{")
                && l.contains("stage=\"tls\"")
                && !l.ends_with(" 0")),
        "{}",
        gw.metrics()
    );
}

#[test]
fn sighup_swaps_the_gateway_certificate_without_dropping_the_service() {
    let libvirtd = libvirtd();
    let dir = tempfile::tempdir().unwrap();
    let mut gw = gateway_with_h1(dir.path(), &libvirtd, libvirtd.port());
    let fingerprint = || {
        let out = python(
            &format!("127.0.0.1:{}", gw.port),
            r#"
import hashlib, os, socket, ssl
host, port = os.environ["URI"].split(":")
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection((host, int(port))))
print(hashlib.sha256(s.getpeercert(True)).hexdigest())
"#,
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let before = fingerprint();
    assert_eq!(before.len(), 64);

    let renewed = libvirtd
        .ca()
        .issue_server(&virtgate_testlab::pki::ServerCertSpec::localhost())
        .unwrap();
    std::fs::write(dir.path().join("gw-cert.pem"), &renewed.cert_pem).unwrap();
    std::fs::write(dir.path().join("gw-key.pem"), &renewed.key_pem).unwrap();
    gw.process.signal(virtgate_testlab::Signal::SIGHUP);
    gw.process
        .wait_for_stderr("TLS certificates and keys reloaded", Duration::from_secs(5))
        .unwrap();

    let after = fingerprint();
    assert_ne!(before, after, "new connections see the renewed certificate");
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    assert!(virsh(&gw.uri("127.0.0.1", "h1", &alice), &["list"])
        .status
        .success());
}

#[test]
fn trickled_pings_cannot_hold_a_connection_open_before_connect_open() {
    let libvirtd = libvirtd();
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        dir.path(),
        &libvirtd,
        &format!(
            "handshake_timeout = \"2s\"\n{}{RULES}",
            host("h1", &["127.0.0.1"], libvirtd.port())
        ),
    );
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    let script = r#"
import os, socket, ssl, time
pki = os.environ["PKI"]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False
ctx.load_verify_locations(pki + "/cacert.pem")
ctx.load_cert_chain(pki + "/clientcert.pem", pki + "/clientkey.pem")
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(os.environ["PORT"]))))
assert s.recv(1) == b"\x01"
ping = bytes.fromhex("0000001c6b656570000000010000000100000002000000000000000000")[:28]
started = time.monotonic()
s.settimeout(0.5)
while time.monotonic() - started < 8:
    try:
        s.sendall(ping)
        data = s.recv(64)
        if data == b"":
            print("closed after %.0f s" % (time.monotonic() - started)); break
    except socket.timeout:
        pass
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
        print("closed after %.0f s" % (time.monotonic() - started)); break
    time.sleep(0.4)
else:
    print("still open")
"#;
    let out = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .env("PKI", &alice.pki)
        .env("PORT", gw.port.to_string())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("closed after"),
        "the pre-open budget is for the whole exchange: {}",
        text(&out)
    );
}

#[test]
fn a_client_that_stops_reading_is_cut_off_and_counted() {
    let libvirtd = libvirtd();
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        dir.path(),
        &libvirtd,
        &format!(
            "write_timeout = \"2s\"\n{}{RULES}",
            host("h1", &["127.0.0.1"], libvirtd.port())
        ),
    );
    gw.wait_trust("h1", "pending");
    gw.approve("h1");
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    // A raw libvirt client with a 4 KiB receive buffer: open h1, pipeline 6000 calls whose replies
    // are kilobytes of capabilities XML (more than the kernel buffers hold), and stop reading.
    let script = format!(
        "{RAW_CONNECT}{RAW_OPEN}{}",
        r#"
s.settimeout(8)
try:
    s.sendall(b"".join(call(7, 2 + i) for i in range(6000)))
except (socket.timeout, OSError):
    pass
time.sleep(4)  # not reading: the gateway's writes to us stall
s.settimeout(5)
end = "timeout"
try:
    while True:
        if not s.recv(65536):
            end = "closed"; break
except socket.timeout:
    pass
except (OSError, ssl.SSLError):
    end = "closed"
print(end)
"#
    );
    let out = raw_client(&script, &alice, gw.port, Some(4096));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "closed",
        "the gateway closed the stalled connection: {}",
        text(&out)
    );
    let metrics = gw.metrics();
    assert_eq!(
        sample(
            &metrics,
            "virtgate_proxy_protocol_errors_total",
            &[("side", "client"), ("reason", "stalled")]
        ),
        Some(1.0),
        "{}",
        text(&out)
    );
    assert!(
        gw.process
            .stderr_text()
            .contains("client violated the framing: stalled")
            || gw.process.stderr_text().contains("stalled")
    );
    assert!(
        virsh(&gw.uri("127.0.0.1", "h1", &alice), &["list"])
            .status
            .success(),
        "still serving others"
    );
}

#[test]
fn stopping_the_gateway_closes_open_sessions_and_exits_cleanly() {
    use std::io::{BufRead, BufReader, Write};
    let libvirtd = libvirtd();
    let dir = tempfile::tempdir().unwrap();
    // A long pre-open budget, so that a silent client is only cut off by the stop itself; no
    // drain (tests/proxy_tier.rs covers proxy.drain_timeout).
    let mut gw = Gateway::start(
        dir.path(),
        &libvirtd,
        &format!(
            "handshake_timeout = \"5min\"\ndrain_timeout = \"0s\"\n{}{RULES}",
            host("h1", &["127.0.0.1"], libvirtd.port())
        ),
    );
    gw.wait_trust("h1", "pending");
    gw.approve("h1");
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    // A client that completes TLS and then says nothing, holding a session before CONNECT_OPEN.
    let silent = format!("{RAW_CONNECT}print('held', flush=True)\ntime.sleep(120)\n");
    let mut held = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &silent])
        .env("PKI", &alice.pki)
        .env("PORT", gw.port.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut held_out = BufReader::new(held.stdout.take().unwrap()).lines();
    assert_eq!(held_out.next().unwrap().unwrap(), "held");
    // Several sessions, so that more than one connection thread holds one.
    let script = r#"
import sys, libvirt
libvirt.registerErrorHandler(lambda _c, _e: None, None)
conns = [libvirt.open(sys.argv[1]) for _ in range(4)]
for c in conns: c.getLibVersion()
print("open", flush=True)
sys.stdin.readline()
for c in conns:
    try:
        c.getLibVersion(); print("answered")
    except libvirt.libvirtError as e:
        print("error")
"#;
    let mut client = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script, &gw.uri("127.0.0.1", "h1", &alice)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "open");

    gw.process.terminate();
    let status = gw.process.wait_timeout(Duration::from_secs(30));
    let _ = held.kill();
    let _ = held.wait();
    assert!(
        status.is_some_and(|s| s.success()),
        "the gateway exits cleanly on SIGTERM with sessions open: {status:?}\n{}",
        gw.process.stderr_text()
    );
    writeln!(client.stdin.take().unwrap()).unwrap();
    let after: Vec<String> = lines.map(Result::unwrap).collect();
    client.wait().unwrap();
    assert_eq!(
        after, ["error"; 4],
        "every open session was closed by the stop"
    );
    let log = gw.process.stderr_text();
    assert_eq!(
        log.matches("gateway shutting down").count(),
        4,
        "one outcome line per closed session:\n{log}"
    );
}

/// Opens h1 through a gateway as alice with a raw client, runs `send` (Python that sends calls
/// with serials 2 to `calls + 1`), then reads replies until it has `calls` of them or the
/// connection ends, and asserts that every call got a successful reply.
fn assert_every_call_answered(send: &str, calls: u32, what: &str) {
    let libvirtd = libvirtd();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_with_h1(dir.path(), &libvirtd, libvirtd.port());
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    let script = format!(
        "{RAW_CONNECT}{RAW_OPEN}{send}{}",
        r#"
s.settimeout(10)
replies = []
while len(replies) < int(os.environ["CALLS"]):
    p = read_packet()
    if p is None:
        break
    replies.append(struct.unpack(">II", p[20:28]))
# libvirtd may answer out of order
print(" ".join("%d:%d" % r for r in sorted(replies)))
"#
    );
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .env("PKI", &alice.pki)
        .env("PORT", gw.port.to_string())
        .env("CALLS", calls.to_string())
        .output()
        .unwrap();
    let expected: Vec<String> = (2..calls + 2).map(|serial| format!("{serial}:0")).collect();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        expected.join(" "),
        "{what}: {}",
        text(&out)
    );
}

#[test]
fn calls_sent_before_the_client_closes_its_side_still_get_their_replies() {
    // 200 GET_CAPABILITIES calls in one write, then a TCP half-close (no TLS close_notify, as
    // libvirt clients close): most replies are still to come when the gateway sees the close.
    assert_every_call_answered(
        r#"
s.sendall(b"".join(call(7, 2 + i) for i in range(200)))
socket.socket.shutdown(s, socket.SHUT_WR)
"#,
        200,
        "every call got its reply before the gateway closed",
    );
}

#[test]
fn pipelined_calls_all_get_their_replies_as_they_do_directly() {
    // Twenty calls sent back to back, each in its own TLS record (as a libvirt client with
    // several threads on one connection sends them), before reading any reply. The gateway
    // receives them in one read; libvirtd answers only messages that arrive in records of their
    // own, so the gateway must not merge them.
    assert_every_call_answered(
        r#"
for i in range(20):
    s.sendall(call(7, 2 + i))
"#,
        20,
        "every pipelined call got its reply",
    );
}

#[test]
fn threads_sharing_one_python_libvirt_connection_all_get_their_answers() {
    let libvirtd = libvirtd();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway_with_h1(dir.path(), &libvirtd, libvirtd.port());
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    // The libvirt client library sends the calls of several threads on one connection without
    // waiting for each other's replies: the pipelining a real client does.
    let script = r#"
import os, threading, time, libvirt
conn = libvirt.open(os.environ["URI"])
expected = (conn.getLibVersion(), conn.lookupByName("test").UUIDString())
results, failures = [], []
def worker():
    try:
        for _ in range(200):
            results.append((conn.getLibVersion(), conn.lookupByName("test").UUIDString()))
    except libvirt.libvirtError as e:
        failures.append(str(e))
threads = [threading.Thread(target=worker, daemon=True) for _ in range(8)]
for t in threads: t.start()
deadline = time.monotonic() + 60
for t in threads: t.join(max(0, deadline - time.monotonic()))
stuck = sum(t.is_alive() for t in threads)
print(len(results), sum(r == expected for r in results), stuck, failures[:1])
os._exit(0)
"#;
    let out = python(&gw.uri("127.0.0.1", "h1", &alice), script);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1600 1600 0 []",
        "calls, correct answers, threads stuck, first failure: {}",
        text(&out)
    );
}

/// The attacker's inventory is answered over HTTPS with a certificate for the right names from
/// the attacker's own CA; a proxy that trusts the real broker's CA, or the real broker's key,
/// takes nothing from it, so h1 stays unknown and the attacker's host sees no connection.
#[test]
fn a_proxy_takes_no_inventory_from_a_broker_its_ca_or_pin_does_not_vouch_for() {
    let attackers_host = libvirtd();
    let tap = Tap::start(
        "127.0.0.1:0",
        format!("127.0.0.1:{}", attackers_host.port())
            .parse()
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let attackers_ca = virtgate_testlab::pki::Ca::new("attacker").unwrap();
    let forged = attackers_ca
        .issue_server(&virtgate_testlab::pki::ServerCertSpec::localhost())
        .unwrap();
    let (forged_cert, forged_key, attackers_ca_file) = (
        dir.path().join("forged-cert.pem"),
        dir.path().join("forged-key.pem"),
        dir.path().join("attacker-ca.pem"),
    );
    std::fs::write(&forged_cert, &forged.cert_pem).unwrap();
    std::fs::write(&forged_key, &forged.key_pem).unwrap();
    std::fs::write(&attackers_ca_file, attackers_ca.cert_pem()).unwrap();
    let fake = FakeBroker::https(
        &forged_cert,
        &forged_key,
        inventory_pointing_h1_at(
            "127.0.0.1",
            tap.addr.port(),
            &attackers_host.server_cert().spki_sha256_hex(),
        ),
    );
    let real = BrokerCert::new(dir.path());
    let setup = ProxySetup::write(dir.path(), "proxy", &attackers_host, None, RULES);
    let alice = identity(&attackers_host, "alice", "C=GB,O=virtgate-test,CN=alice");
    let url = format!("https://127.0.0.1:{}", fake.addr.port());
    let real_pin = format!("sha256:{}", real.pin);
    let real_ca = real.ca_file.to_str().unwrap();

    for trust in [
        ["--broker-ca", real_ca],
        ["--broker-pin", real_pin.as_str()],
    ] {
        let mut proxy = setup.start(&["--broker", &url, trust[0], trust[1]]);
        proxy
            .wait_for_stderr("cannot follow the broker", Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{trust:?}: {}", proxy.stderr_text()));
        let out = virsh(&setup.uri("h1", &alice), &["list"]);
        assert!(
            text(&out).contains("unknown host h1"),
            "{trust:?}: {}\n{}",
            text(&out),
            proxy.stderr_text()
        );
        assert!(
            proxy.stderr_text().contains("TLS with the broker"),
            "{}",
            proxy.stderr_text()
        );
        proxy.stop(Duration::from_secs(5));
    }
    assert!(fake.connections() >= 2, "each proxy tried the broker");
    assert_eq!(fake.answered(), 0, "no request got past the handshake");
    assert_eq!(tap.accepted(), 0, "the attacker's host saw no connection");

    // The control: trusting the attacker's CA by mistake hands h1 to the attacker, so the
    // refusals above are what kept it out.
    let attackers_ca = attackers_ca_file.to_str().unwrap();
    let mut fooled = setup.start(&["--broker", &url, "--broker-ca", attackers_ca]);
    let out = virsh_until(
        &setup.uri("h1", &alice),
        &["list"],
        Duration::from_secs(10),
        |out| out.status.success(),
    );
    assert!(
        out.status.success() && tap.accepted() > 0,
        "{}",
        fooled.stderr_text()
    );
    fooled.stop(Duration::from_secs(5));
}

/// A plain-HTTP broker beyond loopback (here in a lab namespace) is refused before the proxy
/// sends it anything.
#[test]
fn a_proxy_refuses_a_plain_http_broker_beyond_loopback_and_says_how_to_enable_tls() {
    let hosts_ca = libvirtd();
    let lab = virtgate_testlab::netns::Lab::fresh("vgplain", &[("evil", 10), ("gw", 11)]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (requests, inventory) = (
        dir.path().join("requests.log"),
        dir.path().join("inventory.json"),
    );
    std::fs::write(&requests, "").unwrap();
    std::fs::write(
        &inventory,
        inventory_pointing_h1_at(
            "10.250.0.10",
            16514,
            &hosts_ca.server_cert().spki_sha256_hex(),
        ),
    )
    .unwrap();
    let mut evil_cmd = std::process::Command::new("python3");
    evil_cmd
        .arg("-c")
        .arg(PLAIN_HTTP_BROKER)
        .arg(&requests)
        .arg(&inventory);
    let _evil = lab.node("evil").spawn(evil_cmd).unwrap();
    // The attacker's broker answers anyone in the lab who asks.
    let probe = "import sys, time, urllib.request\nfor _ in range(50):\n    try:\n        urllib.request.urlopen('http://10.250.0.10:16580/reachable', timeout=1).read(); sys.exit(0)\n    except Exception:\n        time.sleep(0.1)\nsys.exit(1)";
    let reached = lab
        .node("gw")
        .command("python3")
        .arg("-c")
        .arg(probe)
        .status()
        .unwrap();
    assert!(
        reached.success(),
        "the fake broker does not answer in the lab"
    );

    let setup = ProxySetup::write(dir.path(), "proxy", &hosts_ca, None, RULES);
    let mut cmd = std::process::Command::new(common::VIRTGATE);
    cmd.args(["--config", setup.config.to_str().unwrap(), "proxy"])
        .args(["--broker", "http://10.250.0.10:16580"]);
    let mut proxy = lab.node("gw").spawn(cmd).unwrap();
    let status = proxy.wait_timeout(Duration::from_secs(10));
    let stderr = proxy.stderr_text();
    assert!(
        status.is_some_and(|s| !s.success()),
        "the proxy must refuse a plain-HTTP broker beyond loopback; it runs:\n{stderr}"
    );
    assert!(
        stderr.contains("plain http:// is accepted only for a broker on loopback")
            && stderr.contains("broker.tls_cert_file")
            && stderr.contains("--broker-ca"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&requests).unwrap(),
        "/reachable\n",
        "the proxy never asked the fake broker"
    );
}

/// An HTTP server that logs each request path to argv[1] and answers it with the file argv[2].
const PLAIN_HTTP_BROKER: &str = r#"
import http.server, sys
class Broker(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open(sys.argv[1], "a") as log:
            log.write(self.path.split("?")[0] + "\n")
        body = open(sys.argv[2], "rb").read()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 16580), Broker).serve_forever()
"#;

/// A broker listening beyond loopback over HTTPS: one proxy verifies it by CA and presents its
/// backend identity (from a CA the broker lists), one verifies it by pin and sends the read
/// token (its identity comes from a CA the broker does not list), one has neither and is
/// refused. The approval reaches the first two within a round trip.
#[test]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
fn proxies_follow_a_broker_beyond_loopback_over_https_by_certificate_or_token_and_see_approvals_at_once(
) {
    let others = virtgate_testlab::pki::Ca::new("other gateways").unwrap();
    let libvirtd = Libvirtd::start(LibvirtdOptions {
        extra_client_cas: vec![others.cert_pem().to_string()],
        ..LibvirtdOptions::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = BrokerCert::new(dir.path());
    let (proxies_ca, read_token) = (
        dir.path().join("proxies-ca.pem"),
        dir.path().join("read.token"),
    );
    std::fs::write(&proxies_ca, libvirtd.ca().cert_pem()).unwrap();
    let broker = Broker::start_beyond_loopback(
        dir.path(),
        &cert,
        &format!(
            "proxy_ca_files = [{:?}]\nread_token_file = {:?}\nprobe_interval = \"1s\"\n{}",
            proxies_ca.display().to_string(),
            read_token.display().to_string(),
            host("h1", &["127.0.0.1"], libvirtd.port())
        ),
    );
    broker.wait_host("h1", Duration::from_secs(15), |h| h["trust"] == "pending");
    let other_identity = {
        let issued = others
            .issue_client(&virtgate_testlab::pki::ClientCertSpec::new(
                "O=virtgate-test,CN=gateway-b",
            ))
            .unwrap();
        let pki = dir.path().join("gateway-b");
        issued.write_client_files(&pki, others.cert_pem()).unwrap();
        (pki.join("clientcert.pem"), pki.join("clientkey.pem"))
    };
    let by_cert = ProxySetup::write(dir.path(), "by-cert", &libvirtd, None, RULES);
    let by_token = ProxySetup::write(
        dir.path(),
        "by-token",
        &libvirtd,
        Some(other_identity.clone()),
        RULES,
    );
    let anonymous = ProxySetup::write(
        dir.path(),
        "anonymous",
        &libvirtd,
        Some(other_identity),
        RULES,
    );
    let port = broker.addr.port();
    let (url, ca) = (
        format!("https://127.0.0.1:{port}"),
        cert.ca_file.to_str().unwrap(),
    );
    let _a = by_cert.start(&["--broker", &url, "--broker-ca", ca]);
    let _b = by_token.start(&[
        "--broker",
        &format!("https://localhost:{port}"),
        "--broker-pin",
        &format!("sha256:{}", cert.pin),
        "--broker-token-file",
        read_token.to_str().unwrap(),
    ]);
    let mut c = anonymous.start(&["--broker", &url, "--broker-ca", ca]);
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");

    for proxy in [&by_cert, &by_token] {
        let pending = virsh_until(
            &proxy.uri("h1", &alice),
            &["list"],
            Duration::from_secs(10),
            |out| text(out).contains("is not trusted yet"),
        );
        assert!(
            text(&pending).contains("is not trusted yet"),
            "{}",
            text(&pending)
        );
    }
    c.wait_for_stderr("HTTP 401", Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{}", c.stderr_text()));
    let refused = virsh(&anonymous.uri("h1", &alice), &["list"]);
    assert!(
        text(&refused).contains("unknown host h1"),
        "{}",
        text(&refused)
    );

    // The CLI speaks HTTPS too: the broker of its configuration is verified by the pin of
    // broker.tls_cert_file, and the admin token goes with it.
    let approved = common::approve_shown_pin(|args| broker.cli(args), "h1");
    assert!(approved.status.success(), "{}", text(&approved));
    for proxy in [&by_cert, &by_token] {
        let listed = virsh_until(
            &proxy.uri("h1", &alice),
            &["list", "--all"],
            Duration::from_secs(5),
            |out| out.status.success(),
        );
        assert!(
            listed.status.success() && String::from_utf8_lossy(&listed.stdout).contains("test"),
            "the approval reaches the proxy: {}",
            text(&listed)
        );
    }
}

/// Revisions start again when the broker restarts; the epoch in every watch answer makes a
/// following proxy take the restarted broker's inventory at once, so an approval made right
/// after the restart reaches it within a round trip, not after the old revision is passed.
#[test]
fn a_proxy_follows_a_restarted_broker_at_once_instead_of_waiting_for_its_old_revision() {
    let libvirtd = libvirtd();
    let dir = tempfile::tempdir().unwrap();
    // Busy hosts make the revision climb fast (every probe is a change).
    let busy: String = (0..8)
        .map(|i| host(&format!("nothing{i}"), &["127.0.0.1"], common::free_port()))
        .collect();
    let broker = Broker::start(
        dir.path(),
        &format!(
            "probe_interval = \"1s\"\n{}{busy}",
            host("h1", &["127.0.0.1"], libvirtd.port())
        ),
    );
    let setup = ProxySetup::write(dir.path(), "proxy", &libvirtd, None, RULES);
    let mut proxy = setup.start(&["--broker", &broker.url()]);
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    let pending = virsh_until(
        &setup.uri("h1", &alice),
        &["list"],
        Duration::from_secs(15),
        |out| text(out).contains("is not trusted yet"),
    );
    assert!(
        text(&pending).contains("is not trusted yet"),
        "{}",
        text(&pending)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let old_revision = loop {
        let revision = broker.get_json("/v1/watch?since=0")["revision"]
            .as_u64()
            .unwrap();
        if revision >= 80 {
            break revision;
        }
        assert!(std::time::Instant::now() < deadline, "revision {revision}");
        std::thread::sleep(Duration::from_millis(200));
    };

    // The same broker, restarted on a quiet configuration: its revisions start again, far below.
    let config = std::fs::read_to_string(&broker.config).unwrap();
    std::fs::write(
        &broker.config,
        config.replace("probe_interval = \"1s\"", "probe_interval = \"10m\""),
    )
    .unwrap();
    let broker = broker.restart();
    let approved = common::approve_shown_pin(|args| broker.cli(args), "h1");
    assert!(approved.status.success(), "{}", text(&approved));
    let new_revision = broker.get_json("/v1/watch?since=0")["revision"]
        .as_u64()
        .unwrap();
    assert!(
        new_revision < old_revision,
        "the test needs the new revisions below the old: {new_revision} vs {old_revision}"
    );
    let listed = virsh_until(
        &setup.uri("h1", &alice),
        &["list", "--all"],
        Duration::from_secs(8),
        |out| out.status.success(),
    );
    assert!(
        listed.status.success(),
        "the approval did not reach the proxy after the restart: {}\n{}",
        text(&listed),
        proxy.stderr_text()
    );
    proxy.stop(Duration::from_secs(5));
}
