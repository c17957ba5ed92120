//! The door holds once a connection is open: a client cannot widen what the gateway allowed —
//! not by a second CONNECT_OPEN (after a failed one or a good one), not by authenticating again or
//! changing its identity, not with the QEMU program when read-only, and not with connection
//! names that would make the host's daemon connect onwards or run programs. Every refusal is
//! checked on the host too: its state is unchanged, and for names refused at the door it saw no
//! connection at all. Raw clients send what virsh never would.
#![allow(clippy::disallowed_types)] // synchronous test code: std's clock is the right one

mod common;

use std::time::Duration;

use common::gateway::{identity, text, Gateway};
use common::raw::{raw_client, RAW_CONNECT};
use common::sample;
use common::tap::Tap;
use virtgate_testlab::libvirtd::{Libvirtd, LibvirtdOptions};

const RULES: &str = r#"
[[proxy.rules]]
identity = "C=GB,O=virtgate-test,CN=alice"
hosts = ["*"]
mode = "rw"
[[proxy.rules]]
identity = "C=GB,O=virtgate-test,CN=bob"
hosts = ["h1"]
mode = "ro"
"#;

fn gateway(dir: &std::path::Path, libvirtd: &Libvirtd, port: u16) -> Gateway {
    let hosts = format!(
        "[[broker.hosts]]\nname = \"h1\"\naddresses = [\"127.0.0.1\"]\nport = {port}\n{RULES}"
    );
    let gw = Gateway::start(dir, libvirtd, &hosts);
    gw.wait_trust("h1", "pending");
    gw.approve("h1");
    gw
}

/// What the host itself says about its domains, asked directly.
fn host_domains(libvirtd: &Libvirtd) -> String {
    let out = libvirtd.virsh(&["list", "--all"]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const DEFINE_SNEAKY: &str = r#"
xml = "<domain type='test'><name>sneaky</name><memory>1024</memory><os><type>hvm</type></os></domain>"
def define(serial):
    s.sendall(call(11, serial, xdr_string(xml)))
    p = read_packet()
    return None if p is None else status(p)
"#;

#[test]
fn a_read_only_identity_cannot_open_again_after_a_failed_open() {
    let libvirtd = Libvirtd::start(LibvirtdOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), &libvirtd, libvirtd.port());
    let bob = identity(&libvirtd, "bob", "C=GB,O=virtgate-test,CN=bob");
    let script = format!(
        r#"{RAW_CONNECT}{DEFINE_SNEAKY}
s.settimeout(20)
s.sendall(call(66, 0)); read_packet()
s.sendall(open_call(1, "xen://h1/", 0))
p = read_packet()
print("first open", status(p), error_text(p), flush=True)
try:
    s.sendall(open_call(2, "test:///default", 0))
    p = read_packet()
    print("second open", None if p is None else status(p), flush=True)
    print("define", define(3), flush=True)
except OSError as e:
    print("closed", type(e).__name__, flush=True)
"#
    );
    let out = raw_client(&script, &bob, gw.port, None);
    let said = stdout(&out);
    assert!(
        said.contains("first open 1"),
        "the host refused the first open: {}",
        text(&out)
    );
    assert!(
        !said.contains("second open 0") && !said.contains("define 0"),
        "nothing is relayed after a failed open: {}",
        text(&out)
    );
    assert!(
        !host_domains(&libvirtd).contains("sneaky"),
        "the host defined nothing"
    );
    assert!(
        sample(
            &gw.metrics(),
            "virtgate_proxy_connections_total",
            &[("result", "open_failed")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
}

#[test]
fn a_second_open_on_a_good_connection_is_answered_by_the_gateway_and_ends_it() {
    let libvirtd = Libvirtd::start(LibvirtdOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), &libvirtd, libvirtd.port());
    let bob = identity(&libvirtd, "bob", "C=GB,O=virtgate-test,CN=bob");
    let script = format!(
        r#"{RAW_CONNECT}{DEFINE_SNEAKY}
s.settimeout(20)
s.sendall(call(66, 0)); read_packet()
s.sendall(open_call(1, "test://h1/default", 0))
print("first open", status(read_packet()), flush=True)
s.sendall(open_call(2, "test:///default", 0))
p = read_packet()
print("second open", status(p), error_text(p), flush=True)
try:
    print("after", read_packet(), flush=True)
    print("define", define(3), flush=True)
except OSError as e:
    print("closed", type(e).__name__, flush=True)
"#
    );
    let out = raw_client(&script, &bob, gw.port, None);
    let said = stdout(&out);
    assert!(said.contains("first open 0"), "{}", text(&out));
    assert!(
        said.contains("second open 1")
            && said.contains("virtgate does not relay a second CONNECT_OPEN"),
        "{}",
        text(&out)
    );
    assert!(
        said.contains("after None"),
        "the gateway closed the connection: {}",
        text(&out)
    );
    assert!(!said.contains("define 0"), "{}", text(&out));
    assert!(!host_domains(&libvirtd).contains("sneaky"));
    let refused = sample(
        &gw.metrics(),
        "virtgate_proxy_calls_refused_total",
        &[("reason", "reopen")],
    );
    assert_eq!(refused, Some(1.0));
}

#[test]
fn authenticating_again_or_setting_an_identity_after_open_ends_the_connection() {
    let libvirtd = Libvirtd::start(LibvirtdOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), &libvirtd, libvirtd.port());
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    for (procedure, label) in [(68, "auth"), (66, "auth"), (419, "identity")] {
        let script = format!(
            r#"{RAW_CONNECT}
s.settimeout(20)
s.sendall(call(66, 0)); read_packet()
s.sendall(open_call(1, "test://h1/default", 0))
assert status(read_packet()) == 0
s.sendall(call({procedure}, 2, struct.pack(">I", 0)))
p = read_packet()
print("answer", status(p), error_text(p), flush=True)
print("after", read_packet(), flush=True)
"#
        );
        let out = raw_client(&script, &alice, gw.port, None);
        let said = stdout(&out);
        assert!(
            said.contains("answer 1 operation forbidden: virtgate does not relay"),
            "procedure {procedure}: {}",
            text(&out)
        );
        assert!(
            said.contains("after None"),
            "procedure {procedure}: {}",
            text(&out)
        );
        assert!(
            sample(
                &gw.metrics(),
                "virtgate_proxy_calls_refused_total",
                &[("reason", label)]
            )
            .unwrap_or(0.0)
                >= 1.0
        );
    }
}

#[test]
fn a_read_only_identity_cannot_use_the_qemu_program_or_write_and_its_session_goes_on() {
    let libvirtd = Libvirtd::start(LibvirtdOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), &libvirtd, libvirtd.port());
    let bob = identity(&libvirtd, "bob", "C=GB,O=virtgate-test,CN=bob");
    let script = format!(
        r#"{RAW_CONNECT}{DEFINE_SNEAKY}
s.settimeout(20)
s.sendall(call(66, 0)); read_packet()
s.sendall(open_call(1, "test://h1/default", 0))
assert status(read_packet()) == 0
# QEMU_MONITOR_COMMAND: the qemu program, procedure 1.
s.sendall(call(1, 2, b"", program=0x20008087))
p = read_packet()
print("qemu", status(p), error_text(p), flush=True)
print("define", define(3), flush=True)
s.sendall(call(59, 4))
print("hostname", status(read_packet()), flush=True)
"#
    );
    let out = raw_client(&script, &bob, gw.port, None);
    let said = stdout(&out);
    assert!(
        said.contains("qemu 1 operation forbidden: read only access prevents the qemu program"),
        "{}",
        text(&out)
    );
    assert!(said.contains("define 1"), "{}", text(&out));
    assert!(
        said.contains("hostname 0"),
        "the session goes on: {}",
        text(&out)
    );
    assert!(!host_domains(&libvirtd).contains("sneaky"));
}

#[test]
fn names_that_make_the_host_connect_onwards_or_run_programs_never_reach_it() {
    let libvirtd = Libvirtd::start(LibvirtdOptions::default()).unwrap();
    let tap = Tap::start(
        "127.0.0.1:0",
        format!("127.0.0.1:{}", libvirtd.port()).parse().unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), &libvirtd, tap.addr.port());
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    let marker = dir.path().join("ran");
    let probes = |gw: &Gateway| {
        sample(&gw.metrics(), "virtgate_probe_duration_seconds_count", &[]).unwrap_or(0.0) as usize
    };
    std::thread::sleep(Duration::from_millis(300));
    let (before, probes_before) = (tap.accepted(), probes(&gw));
    for (name, expected) in [
        (
            format!(
                "qemu+ext://h1/system?command=/usr/bin/touch%20{}",
                marker.display()
            ),
            "URI parameter \"command\" is not allowed",
        ),
        (
            "test://h1/default?socket=/run/libvirt/libvirt-sock".to_string(),
            "URI parameter \"socket\" is not allowed",
        ),
        (
            "test://h1/etc/passwd".to_string(),
            "the test driver is allowed only as test:///default",
        ),
        (
            "vbox://h1/session".to_string(),
            "driver \"vbox\" is not allowed",
        ),
    ] {
        let script = format!(
            r#"{RAW_CONNECT}
s.settimeout(20)
s.sendall(call(66, 0)); read_packet()
s.sendall(open_call(1, {name:?}, 0))
p = read_packet()
print("open", status(p), error_text(p), flush=True)
"#
        );
        let out = raw_client(&script, &alice, gw.port, None);
        let said = stdout(&out);
        assert!(
            said.contains("open 1") && said.contains(expected),
            "{name}: {}",
            text(&out)
        );
    }
    // A probe the broker started during the loop may still be running: its connection is counted
    // already, its duration not yet. Every host connection must turn out to be a finished probe; a
    // refused name that reached the host stays an extra connection however long we wait.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let (extra, probed) = loop {
        std::thread::sleep(Duration::from_millis(300));
        let extra = tap.accepted() - before;
        let probed = probes(&gw) - probes_before;
        if extra <= probed || std::time::Instant::now() > deadline {
            break (extra, probed);
        }
    };
    assert!(
        extra <= probed,
        "{extra} host connections, {probed} of them probes: refused names reached the host"
    );
    assert!(!marker.exists(), "no program ran");
    assert!(
        sample(
            &gw.metrics(),
            "virtgate_proxy_connections_total",
            &[("result", "bad_uri")]
        )
        .unwrap_or(0.0)
            >= 4.0
    );
}
