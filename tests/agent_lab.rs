//! Enrollment as an operator does it on a LAN, in a namespace lab: `virtgate up` (discovery on)
//! in one namespace, `virtgate agent --enroll …` pasted in another, in front of a real
//! libvirtd's UNIX socket. The broker finds the waiting agent over mDNS alone (no `--address`),
//! enrolls it, and real virsh reaches libvirtd through gateway and agent. Nothing here touches
//! the root namespace's network; libvirtd's UNIX socket is a file both namespaces see.
#![allow(clippy::disallowed_types)] // synchronous test code: std's clock is the right one

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::gateway::{identity, text, write_up_config};
use common::VIRTGATE;
use serde_json::Value;
use virtgate_testlab::libvirtd::{Libvirtd, LibvirtdOptions};
use virtgate_testlab::netns::{Lab, Node};

const GATEWAY_PORT: u16 = 16514;
const API: &str = "127.0.0.1:16580";

fn run(node: &Node, program: &str, args: &[&str]) -> Output {
    node.command(program).args(args).output().unwrap()
}

/// The inventory entry of `host`, as `virtgate hosts --json` in the gateway's namespace says.
fn inventory_entry(gw: &Node, config: &str, host: &str) -> Option<Value> {
    let out = run(gw, VIRTGATE, &["--config", config, "hosts", "--json"]);
    let hosts: Vec<Value> = serde_json::from_slice(&out.stdout).ok()?;
    hosts.into_iter().find(|h| h["name"] == host)
}

#[test]
#[allow(clippy::too_many_lines)] // one story, read top to bottom
fn an_agent_found_over_mdns_is_enrolled_with_the_pasted_token_and_serves_virsh() {
    let lab = Lab::fresh("vgagent", &[("gw", 10), ("h1", 11)]).unwrap();
    let (gw, h1) = (lab.node("gw"), lab.node("h1"));
    let libvirtd = Libvirtd::start(LibvirtdOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = write_up_config(
        dir.path(),
        &libvirtd,
        GATEWAY_PORT,
        API.parse().unwrap(),
        "discovery = true\nprobe_interval = \"1s\"",
        "[[proxy.rules]]\nidentity = \"*CN=alice\"\nhosts = [\"*\"]\nmode = \"rw\"\n",
    );
    let config = config.to_str().unwrap().to_string();
    let mut up = Command::new(VIRTGATE);
    up.args(["--config", &config, "up"]).env("RUST_LOG", "info");
    let mut up = gw.spawn(up).unwrap();
    up.wait_for_stderr("broker started", Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}: {}", up.stderr_text()));

    // The operator asks for a token without saying where the host is.
    let created = run(
        gw,
        VIRTGATE,
        &["--config", &config, "enroll", "h1", "--json"],
    );
    assert!(created.status.success(), "{}", text(&created));
    let created: Value = serde_json::from_slice(&created.stdout).unwrap();
    let pasted: Vec<&str> = created["command"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .collect();
    assert_eq!(pasted[..2], ["agent", "--enroll"], "{created}");

    // … and pastes the command on h1, which announces itself and waits for the broker.
    let state = dir.path().join("agent-state");
    let socket = libvirtd.unix_socket();
    // (The printed command names the host already: `--hostname h1`.)
    let placement = [
        "--state-dir",
        state.to_str().unwrap(),
        "--libvirt-socket",
        socket.to_str().unwrap(),
    ];
    let mut enroll = Command::new(VIRTGATE);
    enroll.args(&pasted).args(placement).env("RUST_LOG", "info");
    let mut enroll = h1.spawn(enroll).unwrap();
    let status = enroll.wait_timeout(Duration::from_secs(30));
    let log = enroll.stderr_text();
    assert!(
        status.is_some_and(|s| s.success()),
        "enrollment over mDNS: {status:?}\nagent:\n{log}\ngateway:\n{}",
        up.stderr_text()
    );

    // The broker found it by mDNS, pinned the key enrollment proved, and spent the token (its
    // detail says so: no attempt at the agent's other address came after).
    let deadline = Instant::now() + Duration::from_secs(15);
    let host = loop {
        let host = inventory_entry(gw, &config, "h1");
        if host.as_ref().is_some_and(|h| h["trust"] == "enrolled") {
            break host.unwrap();
        }
        assert!(Instant::now() < deadline, "h1 not enrolled: {host:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(host["source"], "mdns", "{host}");
    assert_eq!(host["instance"], "Virtualization Host h1", "{host}");
    let addresses: Vec<&str> = host["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let own = [h1.ipv4.to_string(), h1.ipv6.to_string()];
    assert!(
        !addresses.is_empty() && addresses.iter().all(|a| own.iter().any(|o| o == a)),
        "the addresses h1 announced: {addresses:?}"
    );
    let listed = run(
        gw,
        VIRTGATE,
        &["--config", &config, "enroll", "--list", "--json"],
    );
    let listed: Vec<Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(
        listed.iter().any(|t| t["id"] == created["id"]
            && t["state"] == "spent"
            && t["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("enrolled h1 at"))),
        "{listed:?}"
    );

    // Started for good, it serves virsh through the gateway as libvirtd would directly.
    let mut agent = Command::new(VIRTGATE);
    // Without --hostname, as the systemd unit runs it: it announces the name it was enrolled as.
    agent
        .args(["agent"])
        .args(placement)
        .env("RUST_LOG", "info");
    let mut agent = h1.spawn(agent).unwrap();
    agent
        .wait_for_stderr("agent started", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}: {}", agent.stderr_text()));
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    let uri = format!(
        "test+tls://127.0.0.1:{GATEWAY_PORT}/default?name=test://h1/default&pkipath={}",
        alice.pki.display()
    );
    agent
        .wait_for_stderr("instance=Virtualization Host h1", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}: {}", agent.stderr_text()));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !inventory_entry(gw, &config, "h1").is_some_and(|h| h["state"] == "up") {
        assert!(
            Instant::now() < deadline,
            "h1 not back up after the agent restarted: {:?}\n{}",
            inventory_entry(gw, &config, "h1"),
            up.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for args in [&["hostname"][..], &["list", "--all"]] {
        let direct = libvirtd.virsh(args).unwrap();
        let through = run(
            gw,
            "/usr/bin/virsh",
            &[&["-c", uri.as_str()][..], args].concat(),
        );
        assert!(
            through.status.success(),
            "virsh {args:?} through gateway and agent: {}\ngateway:\n{}\nagent:\n{}",
            text(&through),
            up.stderr_text(),
            agent.stderr_text()
        );
        assert_eq!(through.stdout, direct.stdout, "virsh {args:?}");
    }
}
