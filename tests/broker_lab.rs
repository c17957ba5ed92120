//! Discovery feeding the broker, end to end in a namespace lab: hosts announced with
//! `virtgate advertise` (and serving TLS with a real gnutls-serv) appear in the inventory of a
//! `virtgate broker` running in another namespace, with both address families and the
//! certificates each address presents.
#![allow(clippy::disallowed_types)] // synchronous test code: std's clock is the right one

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use virtgate_testlab::netns::{Lab, Node};
use virtgate_testlab::pki::{Ca, ServerCertSpec};
use virtgate_testlab::LabProcess;

const VIRTGATE: &str = env!("CARGO_BIN_EXE_virtgate");
const BROKER_API: &str = "127.0.0.1:16580";

fn tls_server(node: &Node, ca: &Ca, spec: &ServerCertSpec, dir: &Path) -> LabProcess {
    let issued = ca.issue_server(spec).unwrap();
    let cert = dir.join(format!("{}-cert.pem", node.name));
    let key = dir.join(format!("{}-key.pem", node.name));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    let mut cmd = Command::new("gnutls-serv");
    cmd.args(["--echo", "-p", "16514", "--x509certfile"])
        .arg(&cert)
        .arg("--x509keyfile")
        .arg(&key);
    let mut server = node.spawn(cmd).unwrap();
    server
        .wait_for_stderr("IPv6 :: port 16514...done", Duration::from_secs(5))
        .unwrap();
    server
}

fn spawn_virtgate(node: &Node, args: &[&str]) -> LabProcess {
    let mut cmd = node.command(VIRTGATE);
    cmd.args(args).env("RUST_LOG", "info");
    node.spawn(cmd).unwrap()
}

fn inventory(broker: &Node) -> Vec<Value> {
    let out = broker
        .command(VIRTGATE)
        .args([
            "hosts",
            "--json",
            "--broker",
            &format!("http://{BROKER_API}"),
        ])
        .output()
        .unwrap();
    if !out.status.success() {
        return Vec::new();
    }
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn fully_inventoried(host: &Value, node: &Node) -> bool {
    let want: Vec<IpAddr> = vec![node.ipv4.into(), node.ipv6.into()];
    let addresses: Vec<IpAddr> = host["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().parse().unwrap())
        .collect();
    let endpoints = host["endpoints"].as_array().unwrap();
    addresses == want
        && endpoints.len() == 2
        && endpoints
            .iter()
            .all(|e| e["chain"].as_array().is_some_and(|c| !c.is_empty()) && e["error"].is_null())
}

#[test]
fn advertised_hosts_are_inventoried_with_both_families_and_certificates_within_5s() {
    let lab = Lab::fresh("vgb-lan", &[("broker", 10), ("h1", 11), ("h2", 12)]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("virtgate lab CA").unwrap();
    let (h1, h2, broker) = (lab.node("h1"), lab.node("h2"), lab.node("broker"));
    let _tls1 = tls_server(
        h1,
        &ca,
        &ServerCertSpec::for_names("h1", &["h1"], &[h1.ipv4.into(), h1.ipv6.into()]),
        dir.path(),
    );
    let _tls2 = tls_server(
        h2,
        &ca,
        &ServerCertSpec::for_names("h2", &["h2"], &[h2.ipv4.into()]).expired(),
        dir.path(),
    );

    let config = dir.path().join("broker.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\ndata_dir = {:?}\nlisten = \"{BROKER_API}\"\ndiscovery = true\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let mut broker_process =
        spawn_virtgate(broker, &["--config", config.to_str().unwrap(), "broker"]);
    broker_process
        .wait_for_stderr("broker started", Duration::from_secs(10))
        .unwrap();

    let announced = Instant::now();
    let _a1 = spawn_virtgate(h1, &["advertise", "--hostname", "h1"]);
    let _a2 = spawn_virtgate(h2, &["advertise", "--hostname", "h2"]);

    let mut hosts = Vec::new();
    while announced.elapsed() < Duration::from_secs(5) {
        hosts = inventory(broker);
        let done = [h1, h2].iter().all(|n| {
            hosts
                .iter()
                .any(|h| h["name"] == n.name.as_str() && fully_inventoried(h, n))
        });
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = announced.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "not inventoried within 5 s: {hosts:#?}\nbroker stderr:\n{}",
        broker_process.stderr_text()
    );

    let host1 = hosts.iter().find(|h| h["name"] == "h1").unwrap();
    assert_eq!(host1["source"], "mdns");
    assert_eq!(host1["instance"], "Virtualization Host h1");
    assert_eq!(host1["state"], "up");
    assert_eq!(
        host1["trust"], "pending",
        "an unknown key waits for approval"
    );
    for endpoint in host1["endpoints"].as_array().unwrap() {
        let leaf = &endpoint["chain"][0];
        assert_eq!(leaf["subject_cn"], "h1");
        assert_eq!(leaf["issuer_cn"], "virtgate lab CA");
    }
    let kinds1: Vec<&str> = host1["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert!(
        !kinds1.contains(&"name_not_covered"),
        "h1's SANs cover its name and both addresses: {kinds1:?}"
    );
    let host2 = hosts.iter().find(|h| h["name"] == "h2").unwrap();
    let kinds2: Vec<&str> = host2["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert!(kinds2.contains(&"expired"), "{kinds2:?}");
    assert!(
        kinds2.contains(&"name_not_covered"),
        "h2's IPv6 address is not in its SANs: {kinds2:?}"
    );
}
