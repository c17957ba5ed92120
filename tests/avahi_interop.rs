//! Interoperability with the reference mDNS implementation, avahi, in both directions. Every
//! daemon runs inside network namespaces this test creates.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;
use virtgate_testlab::avahi::{Avahi, AvahiOptions, ServiceFile};
use virtgate_testlab::netns::{Lab, Node};

const VIRTGATE: &str = env!("CARGO_BIN_EXE_virtgate");

fn virtgate(node: &Node, args: &[&str]) -> std::process::Command {
    let mut cmd = node.command(VIRTGATE);
    cmd.args(args);
    cmd
}

fn is_event(line: &str, kind: &str, instance: &str) -> bool {
    let e: Value = serde_json::from_str(line).unwrap_or(Value::Null);
    e["event"] == kind && e["instance"] == instance
}

#[test]
fn a_host_published_by_avahi_is_found_by_virtgate_discover() {
    let lab = Lab::fresh("vga-in", &[("broker", 10), ("h1", 11)]).unwrap();
    let mut options = AvahiOptions::new("avahi-h1");
    options
        .services
        .push(ServiceFile::libvirt("avahi-h1", 16514));
    let _avahi = Avahi::start(lab.node("h1"), &options).unwrap();

    let out = virtgate(
        lab.node("broker"),
        &["discover", "--json", "--timeout", "4s"],
    )
    .output()
    .unwrap();

    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hosts: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let host = hosts
        .iter()
        .find(|h| h["instance"] == "Virtualization Host avahi-h1")
        .unwrap_or_else(|| panic!("avahi's service not found: {hosts:#?}"));
    let addresses: Vec<IpAddr> = host["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        addresses,
        vec![
            IpAddr::from([10, 250, 0, 11]),
            "fd00:250::11".parse().unwrap()
        ]
    );
    assert_eq!(host["hostname"], "avahi-h1.local.");
    assert_eq!(host["port"], 16514);
    assert_eq!(host["txt"]["uri"], "qemu+tls://avahi-h1/system");
}

#[test]
fn virtgate_advertise_is_seen_by_avahi_browse_over_ipv4_and_ipv6() {
    let lab = Lab::fresh("vga-out", &[("broker", 10), ("h1", 11)]).unwrap();
    let mut options = AvahiOptions::new("avahi-broker");
    options.with_dbus = true;
    let avahi = Avahi::start(lab.node("broker"), &options).unwrap();
    let h1 = lab.node("h1");
    let advertiser = h1
        .spawn(virtgate(
            h1,
            &["advertise", "--hostname", "h1", "--txt", "site=lab"],
        ))
        .unwrap();
    advertiser
        .wait_for_line(Duration::from_secs(5), |l| l.starts_with("announcing"))
        .unwrap();

    let records = avahi
        .browse_until("_libvirt._tcp", Duration::from_secs(10), |records| {
            let ours = records
                .iter()
                .filter(|r| r.name == "Virtualization Host h1");
            let families: std::collections::BTreeSet<bool> =
                ours.map(|r| r.address.is_ipv6()).collect();
            families.len() == 2
        })
        .unwrap();

    for record in records
        .iter()
        .filter(|r| r.name == "Virtualization Host h1")
    {
        assert_eq!(record.host_name, "h1.local");
        assert_eq!(record.port, 16514);
        assert!(
            record.address == IpAddr::from([10, 250, 0, 11])
                || record.address == "fd00:250::11".parse::<IpAddr>().unwrap(),
            "unexpected address {record:?}"
        );
        assert_eq!(record.txt_value("uri"), Some("qemu+tls://h1/system"));
        assert_eq!(record.txt_value("site"), Some("lab"));
        assert_eq!(record.txt_value("txtvers"), Some("1"));
    }
}

#[test]
fn avahi_publish_and_its_goodbye_reach_virtgate_discover_watch() {
    let lab = Lab::fresh("vga-pub", &[("broker", 10), ("h1", 11)]).unwrap();
    let mut options = AvahiOptions::new("avahi-pub");
    options.with_dbus = true;
    let avahi = Avahi::start(lab.node("h1"), &options).unwrap();
    let broker = lab.node("broker");
    let watcher = broker
        .spawn(virtgate(
            broker,
            &["discover", "--watch", "--json", "--verify-interval", "0s"],
        ))
        .unwrap();

    let mut published = avahi
        .publish(
            "Virtualization Host avahi-pub",
            "_libvirt._tcp",
            16514,
            &["hostname=avahi-pub"],
        )
        .unwrap();
    watcher
        .wait_for_line(Duration::from_secs(5), |l| {
            is_event(l, "appeared", "Virtualization Host avahi-pub")
        })
        .unwrap();

    published.terminate();
    watcher
        .wait_for_line(Duration::from_secs(5), |l| {
            is_event(l, "removed", "Virtualization Host avahi-pub")
        })
        .expect("avahi's goodbye removes the host");
}
