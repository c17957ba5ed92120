//! LAN discovery, end to end: real `virtgate advertise` and `virtgate discover` processes on
//! real multicast between network namespaces this test creates (never the root namespace).
#![allow(clippy::disallowed_types)] // synchronous test code: std's clock is the right one

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use virtgate_testlab::netns::{Lab, Node};
use virtgate_testlab::LabProcess;

const VIRTGATE: &str = env!("CARGO_BIN_EXE_virtgate");

fn virtgate(node: &Node, args: &[&str]) -> std::process::Command {
    let mut cmd = node.command(VIRTGATE);
    cmd.args(args).env("RUST_LOG", "info");
    cmd
}

fn advertise(node: &Node) -> LabProcess {
    let proc = node
        .spawn(virtgate(node, &["advertise", "--hostname", &node.name]))
        .expect("start virtgate advertise");
    proc.wait_for_line(Duration::from_secs(5), |l| l.starts_with("announcing"))
        .expect("advertiser announces");
    proc
}

fn discover_json(node: &Node, timeout: &str) -> Vec<Value> {
    let out = virtgate(node, &["discover", "--json", "--timeout", timeout])
        .output()
        .expect("run virtgate discover");
    assert!(
        out.status.success(),
        "discover failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("discover --json prints a JSON array")
}

fn addresses(host: &Value) -> Vec<IpAddr> {
    host["addresses"]
        .as_array()
        .expect("addresses is an array")
        .iter()
        .map(|a| a.as_str().unwrap().parse().unwrap())
        .collect()
}

fn find<'a>(hosts: &'a [Value], instance: &str) -> &'a Value {
    hosts
        .iter()
        .find(|h| h["instance"] == instance)
        .unwrap_or_else(|| panic!("{instance} not discovered; got {hosts:#?}"))
}

fn watch(node: &Node, verify_interval: &str) -> LabProcess {
    node.spawn(virtgate(
        node,
        &[
            "discover",
            "--watch",
            "--json",
            "--verify-interval",
            verify_interval,
        ],
    ))
    .expect("start virtgate discover --watch")
}

/// Waits until every one of `instances` has been reported with both address families. One pass
/// over the output, so an event for one instance is never consumed while waiting for another.
fn wait_fully_resolved(watcher: &LabProcess, instances: &[&str]) {
    let mut pending: Vec<&str> = instances.to_vec();
    watcher
        .wait_for_line(Duration::from_secs(10), |line| {
            let event: Value = serde_json::from_str(line).unwrap_or(Value::Null);
            let both = event["event"] != "removed"
                && event["addresses"].as_array().is_some_and(|a| {
                    a.iter().any(|x| x.as_str().unwrap().contains('.'))
                        && a.iter().any(|x| x.as_str().unwrap().contains(':'))
                });
            if both {
                pending.retain(|i| event["instance"] != *i);
            }
            pending.is_empty()
        })
        .expect("every instance resolved with IPv4 and IPv6");
}

fn wait_removed(watcher: &LabProcess, instance: &str, timeout: Duration) -> Option<Instant> {
    watcher
        .wait_for_line(timeout, |line| {
            let event: Value = serde_json::from_str(line).unwrap_or(Value::Null);
            event["event"] == "removed" && event["instance"] == instance
        })
        .ok()
        .map(|(at, _)| at)
}

#[test]
fn two_advertised_hosts_are_discovered_with_both_families_port_and_txt_within_3s() {
    let lab = Lab::fresh("vgd-two", &[("broker", 10), ("h1", 11), ("h2", 12)]).unwrap();
    let (h1, h2) = (lab.node("h1"), lab.node("h2"));
    let _a1 = advertise(h1);
    let _a2 = advertise(h2);

    let hosts = discover_json(lab.node("broker"), "3s");

    assert_eq!(hosts.len(), 2, "exactly the two lab hosts: {hosts:#?}");
    for node in [h1, h2] {
        let host = find(&hosts, &format!("Virtualization Host {}", node.name));
        assert_eq!(
            addresses(host),
            vec![IpAddr::V4(node.ipv4), IpAddr::V6(node.ipv6)]
        );
        assert_eq!(host["port"], 16514);
        assert_eq!(host["hostname"], format!("{}.local.", node.name));
        assert_eq!(host["txt"]["txtvers"], "1");
        assert_eq!(host["txt"]["hostname"], node.name.as_str());
        assert_eq!(
            host["txt"]["uri"],
            format!("qemu+tls://{}/system", node.name)
        );
    }
}

#[test]
fn a_hypervisor_bridge_address_is_never_announced() {
    let lab = Lab::fresh("vgd-virbr", &[("broker", 10), ("h1", 11)]).unwrap();
    let h1 = lab.node("h1");
    h1.add_bridge_interface("virbr0", &["192.168.122.1/24", "fd00:122::1/64"])
        .unwrap();
    let _a1 = advertise(h1);

    let out = virtgate(lab.node("broker"), &["discover", "--timeout", "3s"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);

    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.starts_with("INSTANCE"),
        "a table with a header: {table}"
    );
    let row = table
        .lines()
        .find(|l| l.starts_with("Virtualization Host h1"))
        .unwrap_or_else(|| panic!("h1 listed: {table}"));
    assert!(
        row.contains("10.250.0.11") && row.contains("fd00:250::11"),
        "{row}"
    );
    assert!(
        !table.contains("192.168.122.1"),
        "virbr0's IPv4 announced: {table}"
    );
    assert!(
        !table.contains("fd00:122::1"),
        "virbr0's IPv6 announced: {table}"
    );
}

#[test]
fn a_cleanly_stopped_advertiser_is_removed_within_2s() {
    let lab = Lab::fresh("vgd-bye", &[("broker", 10), ("h1", 11)]).unwrap();
    let mut a1 = advertise(lab.node("h1"));
    let watcher = watch(lab.node("broker"), "0s");
    wait_fully_resolved(&watcher, &["Virtualization Host h1"]);

    let stopped = Instant::now();
    a1.terminate();

    let removed = wait_removed(&watcher, "Virtualization Host h1", Duration::from_secs(4))
        .expect("Removed after the goodbye packets");
    let took = removed - stopped;
    assert!(took <= Duration::from_secs(2), "removal took {took:?}");
    assert!(
        a1.wait_timeout(Duration::from_secs(3))
            .is_some_and(|s| s.success()),
        "advertiser exits cleanly on SIGTERM"
    );
}

#[test]
fn a_killed_advertiser_is_removed_once_verified_and_a_live_one_is_kept() {
    let lab = Lab::fresh("vgd-kill", &[("broker", 10), ("h1", 11), ("h2", 12)]).unwrap();
    let mut a1 = advertise(lab.node("h1"));
    let _a2 = advertise(lab.node("h2"));
    // Verify every second with the default 2 s verify timeout: a silent host must be gone within
    // 1 s + 2 s (+ scheduling slack), far below the 120 s record TTL.
    let watcher = watch(lab.node("broker"), "1s");
    wait_fully_resolved(
        &watcher,
        &["Virtualization Host h1", "Virtualization Host h2"],
    );

    let killed = Instant::now();
    a1.kill9();

    let lines = watcher.lines_until(killed + Duration::from_secs(6), |_| false);
    let removals: Vec<(Duration, Value)> = lines
        .iter()
        .filter_map(|(at, l)| {
            let e: Value = serde_json::from_str(l).ok()?;
            (e["event"] == "removed").then(|| (*at - killed, e))
        })
        .collect();
    assert_eq!(
        removals.len(),
        1,
        "only the killed host is removed: {removals:?}"
    );
    let (took, event) = &removals[0];
    assert_eq!(event["instance"], "Virtualization Host h1");
    assert!(
        *took <= Duration::from_millis(4500),
        "removal took {took:?}"
    );
}
