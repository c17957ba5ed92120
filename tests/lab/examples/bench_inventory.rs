//! Benchmark (not a test): how long the broker takes to inventory and probe N hosts announced on
//! the LAN, and how much memory it uses. Runs entirely inside a namespace lab.
//!
//! `bench_inventory VIRTGATE_BIN ADVERTISE_MANY_BIN [N]` — see `bench/inventory.sh`.
#![allow(clippy::disallowed_types)] // synchronous test code: std's clock is the right one

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use virtgate_testlab::netns::{Lab, Node};
use virtgate_testlab::pki::{Ca, ServerCertSpec};
use virtgate_testlab::LabProcess;

const HOST_NODES: [(&str, u8); 4] = [("h1", 11), ("h2", 12), ("h3", 13), ("h4", 14)];
const API: &str = "127.0.0.1:16580";

fn inventory(virtgate: &str, broker: &Node) -> Vec<Value> {
    let out = broker
        .command(virtgate)
        .args(["hosts", "--json", "--broker", &format!("http://{API}")])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn proc_status(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    ticks / 100.0
}

#[allow(clippy::too_many_lines)] // the benchmark, step by step
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let virtgate = args.get(1).expect("path to the virtgate binary").clone();
    let advertise_many = args.get(2).expect("path to advertise_many").clone();
    let total: usize = args.get(3).map(|n| n.parse().unwrap()).unwrap_or(1000);
    let per_node = total.div_ceil(HOST_NODES.len());

    let mut nodes = vec![("broker", 10)];
    nodes.extend(HOST_NODES);
    let lab = Lab::fresh("vgbench", &nodes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("bench CA").unwrap();
    let mut keep: Vec<LabProcess> = Vec::new();
    for (name, _) in HOST_NODES {
        let node = lab.node(name);
        let issued = ca
            .issue_server(&ServerCertSpec::for_names(
                name,
                &[name],
                &[node.ipv4.into(), node.ipv6.into()],
            ))
            .unwrap();
        let (cert, key) = (
            dir.path().join(format!("{name}.crt")),
            dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        std::fs::write(&key, &issued.key_pem).unwrap();
        let mut server = Command::new("gnutls-serv");
        server
            .args(["--echo", "-p", "16514", "--x509certfile"])
            .arg(&cert)
            .arg("--x509keyfile")
            .arg(&key);
        let mut server = node.spawn(server).unwrap();
        server
            .wait_for_stderr("IPv6 :: port 16514...done", Duration::from_secs(5))
            .unwrap();
        keep.push(server);
    }

    let config = dir.path().join("broker.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\ndata_dir = {:?}\nlisten = \"{API}\"\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let broker = lab.node("broker");
    let mut cmd = broker.command(&virtgate);
    cmd.args([
        "--config",
        config.to_str().unwrap(),
        "--log-filter",
        "warn",
        "broker",
    ]);
    let mut broker_process = broker.spawn(cmd).unwrap();
    let ready = Instant::now() + Duration::from_secs(10);
    while broker
        .command(&virtgate)
        .args(["hosts", "--broker", &format!("http://{API}")])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < ready,
            "broker did not start: {}",
            broker_process.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = broker_process.pid();
    let rss_idle = proc_status(pid, "VmRSS:");
    let cpu_idle = cpu_seconds(pid);

    let started = Instant::now();
    for (name, _) in HOST_NODES {
        let node = lab.node(name);
        let mut cmd = node.command(&advertise_many);
        cmd.args([
            name,
            &per_node.to_string(),
            "16514",
            &node.ipv4.to_string(),
            &node.ipv6.to_string(),
        ]);
        keep.push(node.spawn(cmd).unwrap());
    }
    let (mut all_seen, mut all_probed) = (None, None);
    let deadline = started + Duration::from_secs(300);
    while Instant::now() < deadline && all_probed.is_none() {
        std::thread::sleep(Duration::from_millis(250));
        let hosts = inventory(&virtgate, broker);
        let seen = hosts.len();
        let probed = hosts
            .iter()
            .filter(|h| {
                h["state"] == "up"
                    && h["endpoints"]
                        .as_array()
                        .is_some_and(|e| e.len() == 2 && e.iter().all(|e| e["error"].is_null()))
            })
            .count();
        if seen >= per_node * HOST_NODES.len() && all_seen.is_none() {
            all_seen = Some(started.elapsed());
        }
        if probed >= per_node * HOST_NODES.len() {
            all_probed = Some(started.elapsed());
        }
        eprint!(
            "\r{:>6.1}s  seen {seen:>5}  probed (both families) {probed:>5}",
            started.elapsed().as_secs_f64()
        );
    }
    eprintln!();
    let hosts = inventory(&virtgate, broker);
    let mut shapes: std::collections::BTreeMap<String, usize> = Default::default();
    for h in &hosts {
        let endpoints = h["endpoints"].as_array().cloned().unwrap_or_default();
        let errors: Vec<String> = endpoints
            .iter()
            .filter_map(|e| e["error_reason"].as_str().map(str::to_string))
            .collect();
        let key = format!(
            "addresses={} endpoints={} errors={:?} state={}",
            h["addresses"].as_array().map(|a| a.len()).unwrap_or(0),
            endpoints.len(),
            errors,
            h["state"].as_str().unwrap_or("?")
        );
        *shapes.entry(key).or_default() += 1;
    }
    for (shape, count) in &shapes {
        eprintln!("  {count:>5} hosts: {shape}");
    }
    if let Some(h) = hosts.iter().find(|h| {
        h["endpoints"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| !e["error"].is_null()))
    }) {
        eprintln!("  example error: {}", h["endpoints"]);
    }
    let rss = proc_status(pid, "VmRSS:");
    let hwm = proc_status(pid, "VmHWM:");
    let cpu = cpu_seconds(pid) - cpu_idle;
    let db = std::fs::metadata(dir.path().join("data/inventory.sqlite"))
        .map(|m| m.len())
        .unwrap_or(0)
        + std::fs::metadata(dir.path().join("data/inventory.sqlite-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
    let n = per_node * HOST_NODES.len();
    let fmt = |d: Option<Duration>| {
        d.map(|d| format!("{:.2} s", d.as_secs_f64()))
            .unwrap_or_else(|| "not reached (300 s)".into())
    };
    println!(
        "| measure ({n} hosts, {} addresses, 4 announcing namespaces) | value |",
        n * 2
    );
    println!("| --- | --- |");
    println!(
        "| all {n} hosts in the inventory (from advertiser start) | {} |",
        fmt(all_seen)
    );
    println!(
        "| all {n} hosts probed on IPv4 and IPv6 ({} TLS handshakes) | {} |",
        n * 2,
        fmt(all_probed)
    );
    println!(
        "| broker RSS idle (0 hosts) | {:.1} MiB |",
        rss_idle as f64 / 1024.0
    );
    println!(
        "| broker RSS with {n} hosts | {:.1} MiB |",
        rss as f64 / 1024.0
    );
    println!(
        "| broker peak RSS (VmHWM) | {:.1} MiB |",
        hwm as f64 / 1024.0
    );
    println!("| broker CPU time for the run | {cpu:.2} s |");
    println!(
        "| SQLite inventory size (db + WAL) | {:.1} MiB |",
        db as f64 / (1024.0 * 1024.0)
    );
    broker_process.stop(Duration::from_secs(5));
    drop(keep);
    let _ = Path::new(&virtgate);
}
