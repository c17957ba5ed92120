//! The gateway under pressure and after the fact: it raises its open files limit, one address
//! cannot take every connection slot with handshakes it never finishes, a length word alone
//! costs no memory, and open sessions end when their grounds go (a reloaded CRL revokes the
//! client, the host is forgotten). Real virsh, python3-libvirt and libvirtd, on loopback.
#![allow(clippy::disallowed_types)] // synchronous test code: std's clock is the right one

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::gateway::{identity, text, virsh, Gateway};
use common::raw::{raw_client, RAW_CONNECT, RAW_OPEN};
use common::{free_port, sample, VIRTGATE};
use virtgate_testlab::libvirtd::{Libvirtd, LibvirtdOptions};
use virtgate_testlab::LabProcess;

const RULES: &str = r#"
[[proxy.rules]]
identity = "C=GB,O=virtgate-test,CN=alice"
hosts = ["*"]
mode = "rw"
"#;

fn h1(port: u16) -> String {
    format!("[[broker.hosts]]\nname = \"h1\"\naddresses = [\"127.0.0.1\"]\nport = {port}\n")
}

fn approved(gw: &Gateway) {
    gw.wait_trust("h1", "pending");
    gw.approve("h1");
}

/// A field of /proc/PID/status or /proc/PID/limits.
fn proc_field(pid: u32, file: &str, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/{file}"))[field.len()..]
        .trim()
        .to_string()
}

fn rss_kib(pid: u32) -> u64 {
    proc_field(pid, "status", "VmRSS:")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn the_open_files_limit_is_raised_to_the_hard_limit_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("virtgate.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\ndata_dir = {:?}\nlisten = \"127.0.0.1:{}\"\ndiscovery = false\n",
            dir.path().join("data").display().to_string(),
            free_port()
        ),
    )
    .unwrap();
    let script = format!(
        "ulimit -S -n 256 && exec {VIRTGATE} --config {} broker",
        config.display()
    );
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", &script]);
    let mut broker = LabProcess::spawn(cmd).unwrap();
    broker
        .wait_for_stderr("open files limit", Duration::from_secs(10))
        .unwrap();
    let limits = proc_field(broker.pid(), "limits", "Max open files");
    let mut numbers = limits.split_whitespace();
    let (soft, hard) = (numbers.next().unwrap(), numbers.next().unwrap());
    assert_eq!(soft, hard, "soft limit raised to the hard one: {limits}");
    assert_ne!(soft, "256", "{limits}");
    broker.stop(Duration::from_secs(5));
}

#[test]
fn one_address_holding_unfinished_handshakes_cannot_take_every_slot() {
    let libvirtd = Libvirtd::start(LibvirtdOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let limits = "max_connections = 8\nmax_handshakes_per_source = 3\n";
    let gw = Gateway::start(
        dir.path(),
        &libvirtd,
        &format!("{limits}{}{RULES}", h1(libvirtd.port())),
    );
    approved(&gw);
    // 20 TCP connections from 127.0.0.3 that never start TLS, held open.
    let mut flood = Command::new("/usr/bin/python3");
    flood.args([
        "-c",
        &format!(
            r#"
import socket, time
held = []
for _ in range(20):
    s = socket.socket(); s.bind(("127.0.0.3", 0)); s.connect(("127.0.0.1", {}))
    held.append(s)
print("holding", len(held), flush=True)
time.sleep(60)
"#,
            gw.port
        ),
    ]);
    let flood = LabProcess::spawn(flood).unwrap();
    flood
        .wait_for_line(Duration::from_secs(10), |l| l.starts_with("holding"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    let listed = virsh(&gw.uri("127.0.0.1", "h1", &alice), &["list"]);
    assert!(
        listed.status.success(),
        "another address still gets in: {}",
        text(&listed)
    );
    let refused = sample(
        &gw.metrics(),
        "virtgate_proxy_connections_total",
        &[("result", "refused_source")],
    );
    assert!(refused.unwrap_or(0.0) >= 17.0, "{refused:?}");
}

#[test]
fn a_length_word_claiming_32_mib_costs_no_memory_until_the_bytes_arrive() {
    let libvirtd = Libvirtd::start(LibvirtdOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        dir.path(),
        &libvirtd,
        &format!("{}{RULES}", h1(libvirtd.port())),
    );
    approved(&gw);
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    let before = rss_kib(gw.process.pid());
    // 20 open connections, each sending only the length word of a 32 MiB packet.
    let script = format!(
        r#"
import sys
sessions = []
for _ in range(20):
{connect}
{open}
    s.sendall(bytes.fromhex("02000004"))
    sessions.append(s)
print("sent", flush=True)
time.sleep(3)
"#,
        connect = indent(RAW_CONNECT),
        open = indent(RAW_OPEN),
    );
    let out = raw_client(&script, &alice, gw.port, None);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("sent"),
        "{}",
        text(&out)
    );
    let after = rss_kib(gw.process.pid());
    let grown_mib = after.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 100,
        "the gateway grew by {grown_mib} MiB for 20 bare length words"
    );
}

/// Indents a Python block one level, to run it inside a loop.
fn indent(block: &str) -> String {
    block
        .lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A python3-libvirt client that keeps one connection busy and reports when it breaks.
fn busy_client(uri: &str) -> LabProcess {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args([
        "-c",
        r#"
import libvirt, os, time
libvirt.registerErrorHandler(lambda *a: None, None)
c = libvirt.open(os.environ["URI"])
print("open", flush=True)
for _ in range(200):
    try:
        c.getHostname()
    except libvirt.libvirtError as e:
        print("broken", e.get_error_message(), flush=True)
        break
    time.sleep(0.1)
else:
    print("still open", flush=True)
"#,
    ])
    .env("URI", uri);
    LabProcess::spawn(cmd).unwrap()
}

fn broken_within(client: &LabProcess, limit: Duration) -> bool {
    client
        .wait_for_line(limit, |l| l.starts_with("broken") || l == "still open")
        .is_ok_and(|(_, line)| line.starts_with("broken"))
}

#[test]
fn a_session_ends_when_a_reloaded_crl_revokes_its_client() {
    let libvirtd = Libvirtd::start(LibvirtdOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let crl = dir.path().join("crl.pem");
    std::fs::write(&crl, libvirtd.ca().crl(&[]).unwrap()).unwrap();
    let mut gw = Gateway::start(
        dir.path(),
        &libvirtd,
        &format!(
            "crl_file = {:?}\n{}{RULES}",
            crl.display().to_string(),
            h1(libvirtd.port())
        ),
    );
    approved(&gw);
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    let client = busy_client(&gw.uri("127.0.0.1", "h1", &alice));
    client
        .wait_for_line(Duration::from_secs(10), |l| l == "open")
        .unwrap();
    let pem = std::fs::read(alice.pki.join("clientcert.pem")).unwrap();
    let (_, der) = virtgate_pki::x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let serial = der.parse_x509().unwrap().raw_serial().to_vec();
    std::fs::write(&crl, libvirtd.ca().crl(&[serial]).unwrap()).unwrap();
    gw.process.signal(virtgate_testlab::Signal::SIGHUP);
    assert!(
        broken_within(&client, Duration::from_secs(10)),
        "the revoked client's session was closed\n{}",
        gw.process.stderr_text()
    );
    assert_eq!(
        sample(
            &gw.metrics(),
            "virtgate_proxy_connections_total",
            &[("result", "revoked")]
        ),
        Some(1.0)
    );
}

#[test]
fn a_session_ends_when_its_host_is_forgotten() {
    let libvirtd = Libvirtd::start(LibvirtdOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        dir.path(),
        &libvirtd,
        &format!("{}{RULES}", h1(libvirtd.port())),
    );
    approved(&gw);
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    let client = busy_client(&gw.uri("127.0.0.1", "h1", &alice));
    client
        .wait_for_line(Duration::from_secs(10), |l| l == "open")
        .unwrap();
    let started = Instant::now();
    let out = Command::new(VIRTGATE)
        .args([
            "--config",
            gw.config.to_str().unwrap(),
            "hosts",
            "forget",
            "h1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        broken_within(&client, Duration::from_secs(10)),
        "the session to the forgotten host was closed\n{}",
        gw.process.stderr_text()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
