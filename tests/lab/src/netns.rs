//! Network-namespace lab (`shared/notes/mdns-lab.md` §4).
//!
//! Layout: a switch namespace `<prefix>-sw` holds bridge `br0` (multicast snooping and STP off);
//! every node namespace `<prefix>-<node>` gets a veth end `eth0` whose peer `p-<node>` is a port
//! of `br0`. Node `I` has 10.250.0.I/24 and fd00:250::I/64 (the decimal digits of `I` written
//! as the last IPv6 group, as in the note: node 11 is `fd00:250::11`). DAD and router
//! advertisements are off. Nothing is created in the root namespace, so the machine's real
//! interfaces never see lab traffic.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::Signal;

pub use crate::process::{require_python3_modules, require_root_and_tools};
use crate::process::{run, send_signal, tool, LabProcess};

/// Tools every lab needs.
pub const LAB_TOOLS: &[&str] = &["ip", "sysctl"];

const POLL: Duration = Duration::from_millis(50);
const READY_TIMEOUT: Duration = Duration::from_secs(5);
const TERM_GRACE: Duration = Duration::from_secs(2);

fn ip() -> Command {
    Command::new(tool("ip"))
}

fn ip_ns(ns: &str) -> Command {
    let mut c = ip();
    c.args(["-n", ns]);
    c
}

/// Runs `ip -n NS args…`, failing on a non-zero exit.
fn ip_n(ns: &str, args: &[&str]) -> Result<()> {
    run(ip_ns(ns).args(args)).map(drop)
}

/// Whether `ip -n NS args…` succeeds (used for "does this exist" probes).
fn ip_n_ok(ns: &str, args: &[&str]) -> bool {
    ip_ns(ns)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn sysctl_in(ns: &str, settings: &[&str]) -> Result<()> {
    run(ip()
        .args(["netns", "exec", ns])
        .arg(tool("sysctl"))
        .arg("-qw")
        .args(settings))
    .map(drop)
}

/// Names of all network namespaces (`ip netns list`, which prints `name (id: N)` or `name`).
pub fn list_namespaces() -> Result<Vec<String>> {
    let out = run(ip().args(["netns", "list"]))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// One lab host: a network namespace with `eth0` on the lab bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Node name as given to [`Lab::up`] (e.g. `h1`).
    pub name: String,
    /// Namespace name, `<prefix>-<name>`.
    pub ns: String,
    /// `10.250.0.I` on `eth0`.
    pub ipv4: Ipv4Addr,
    /// `fd00:250::I` on `eth0`.
    pub ipv6: Ipv6Addr,
}

impl Node {
    fn new(prefix: &str, name: &str, index: u8) -> Node {
        Node {
            name: name.to_string(),
            ns: format!("{prefix}-{name}"),
            ipv4: Ipv4Addr::new(10, 250, 0, index),
            ipv6: format!("fd00:250::{index}")
                .parse()
                .expect("valid IPv6 literal"),
        }
    }

    /// `ip netns exec NS program`: add arguments and run it like any `Command`.
    pub fn command(&self, program: &str) -> Command {
        let mut c = ip();
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// Spawns `cmd` inside this node as a [`LabProcess`].
    ///
    /// `cmd` describes the program as if run locally (`Command::new("python3").arg(…)`); it is
    /// rewritten to `ip netns exec NS …` keeping args, explicitly set env vars and cwd. A
    /// command already made by [`Node::command`] is spawned as is.
    pub fn spawn(&self, cmd: Command) -> Result<LabProcess> {
        let already_inside = tool("ip") == std::path::Path::new(cmd.get_program())
            && cmd
                .get_args()
                .take(3)
                .map(|a| a.to_string_lossy().into_owned())
                .eq(["netns", "exec", self.ns.as_str()].map(String::from));
        if already_inside {
            return LabProcess::spawn(cmd);
        }
        let mut wrapped = ip();
        wrapped
            .args(["netns", "exec", &self.ns])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            wrapped.current_dir(dir);
        }
        LabProcess::spawn(wrapped)
    }

    /// Adds (idempotently) a bridge `name` inside this node, up, holding `addrs` (CIDR, IPv4 or
    /// IPv6; IPv6 without DAD), with one veth port `<name>-nic` (peer `<name>-vm`) so the bridge
    /// is operationally up like a real `virbr0` with a guest attached. Used to prove that an
    /// advertiser skips such interfaces. `name` must be at most 11 characters.
    pub fn add_bridge_interface(&self, name: &str, addrs: &[&str]) -> Result<()> {
        ensure!(
            valid_label(name) && name.len() <= 11,
            "bridge name {name:?} must be ≤ 11 chars of [A-Za-z0-9_-] (it gets a -nic port)"
        );
        let ns = &self.ns;
        let port = format!("{name}-nic");
        let peer = format!("{name}-vm");
        if !ip_n_ok(ns, &["link", "show", "dev", name]) {
            ip_n(ns, &["link", "add", name, "type", "bridge"])?;
        }
        ip_n(
            ns,
            &["link", "set", name, "type", "bridge", "stp_state", "0"],
        )?;
        if !ip_n_ok(ns, &["link", "show", "dev", &port]) {
            ip_n(
                ns,
                &["link", "add", &port, "type", "veth", "peer", "name", &peer],
            )?;
        }
        ip_n(ns, &["link", "set", &port, "master", name, "up"])?;
        ip_n(ns, &["link", "set", &peer, "up"])?;
        for addr in addrs {
            if addr.contains(':') {
                ip_n(ns, &["addr", "replace", addr, "dev", name, "nodad"])?;
            } else {
                ip_n(ns, &["addr", "replace", addr, "dev", name])?;
            }
        }
        ip_n(ns, &["link", "set", name, "up"])?;
        wait_until(READY_TIMEOUT, || {
            Ok(operstate(ns, name)? == "UP" && !has_tentative(ns, name)?)
        })
        .with_context(|| format!("{name} in {ns} did not come up"))
    }
}

/// `operstate` as `ip -j` reports it (`UP`, `DOWN`, `UNKNOWN`, …).
fn operstate(ns: &str, dev: &str) -> Result<String> {
    let out = run(ip_ns(ns).args(["-j", "link", "show", "dev", dev]))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("parse ip -j link")?;
    Ok(v[0]["operstate"].as_str().unwrap_or_default().to_string())
}

fn has_tentative(ns: &str, dev: &str) -> Result<bool> {
    let out = run(ip_ns(ns).args(["-6", "addr", "show", "dev", dev, "tentative"]))?;
    Ok(!out.stdout.iter().all(u8::is_ascii_whitespace))
}

fn wait_until(timeout: Duration, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("not ready after {timeout:?}");
        }
        thread::sleep(POLL);
    }
}

/// A running lab; dropping it tears it down ([`Lab::down`]).
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    switch_ns: String,
    nodes: Vec<Node>,
}

impl Lab {
    /// Brings the lab up, creating only what is missing, and waits (≤ 5 s) until every `eth0`
    /// is operationally up with no tentative IPv6 address.
    ///
    /// `nodes` are `(name, I)` pairs; names are ≤ 13 chars of `[A-Za-z0-9_-]` (the switch port
    /// `p-<name>` must fit in 15), `I` is 1..=254 and unique. Labs with different prefixes are
    /// independent and may run in parallel; one prefix must not be a dash-extension of another
    /// (`lab` and `lab-x`), because [`Lab::down`] matches `<prefix>-*`.
    pub fn up(prefix: &str, nodes: &[(&str, u8)]) -> Result<Lab> {
        require_root_and_tools(LAB_TOOLS);
        ensure!(valid_label(prefix), "bad lab prefix {prefix:?}");
        let mut seen_names = HashSet::new();
        let mut seen_index = HashSet::new();
        for (name, index) in nodes {
            ensure!(
                valid_label(name) && name.len() <= 13 && *name != "sw",
                "bad node name {name:?} (≤ 13 chars of [A-Za-z0-9_-], not \"sw\")"
            );
            ensure!(
                (1..=254).contains(index),
                "node {name}: index {index} not in 1..=254"
            );
            ensure!(seen_names.insert(*name), "duplicate node name {name}");
            ensure!(seen_index.insert(*index), "duplicate node index {index}");
        }
        let lab = Lab {
            prefix: prefix.to_string(),
            switch_ns: format!("{prefix}-sw"),
            nodes: nodes
                .iter()
                .map(|(n, i)| Node::new(prefix, n, *i))
                .collect(),
        };
        lab.create()
            .with_context(|| format!("bring up lab {prefix}"))?;
        Ok(lab)
    }

    /// [`Lab::down`] then [`Lab::up`]: leftovers of a crashed earlier run never leak in.
    pub fn fresh(prefix: &str, nodes: &[(&str, u8)]) -> Result<Lab> {
        Self::down(prefix)?;
        Self::up(prefix, nodes)
    }

    fn create(&self) -> Result<()> {
        let existing: HashSet<String> = list_namespaces()?.into_iter().collect();
        let sw = self.switch_ns.as_str();
        let all_ns = std::iter::once(sw).chain(self.nodes.iter().map(|n| n.ns.as_str()));
        for ns in all_ns {
            if !existing.contains(ns) {
                run(ip().args(["netns", "add", ns]))?;
            }
            ip_n(ns, &["link", "set", "lo", "up"])?;
            sysctl_in(
                ns,
                &[
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                    "net.ipv6.conf.all.accept_ra=0",
                    "net.ipv6.conf.default.accept_ra=0",
                ],
            )?;
        }
        if !ip_n_ok(sw, &["link", "show", "dev", "br0"]) {
            ip_n(sw, &["link", "add", "br0", "type", "bridge"])?;
        }
        ip_n(
            sw,
            &[
                "link",
                "set",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
                "stp_state",
                "0",
            ],
        )?;
        ip_n(sw, &["link", "set", "br0", "up"])?;

        for node in &self.nodes {
            let ns = node.ns.as_str();
            let port = format!("p-{}", node.name);
            if !ip_n_ok(ns, &["link", "show", "dev", "eth0"]) {
                // A port without its eth0 is half of a pair from an interrupted run.
                if ip_n_ok(sw, &["link", "show", "dev", &port]) {
                    ip_n(sw, &["link", "del", &port])?;
                }
                ip_n(
                    sw,
                    &[
                        "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns,
                    ],
                )?;
            }
            ip_n(sw, &["link", "set", &port, "master", "br0", "up"])?;
            sysctl_in(
                ns,
                &[
                    "net.ipv6.conf.eth0.accept_dad=0",
                    "net.ipv6.conf.eth0.accept_ra=0",
                ],
            )?;
            let v4 = format!("{}/24", node.ipv4);
            let v6 = format!("{}/64", node.ipv6);
            ip_n(ns, &["addr", "replace", &v4, "dev", "eth0"])?;
            ip_n(ns, &["addr", "replace", &v6, "dev", "eth0", "nodad"])?;
            ip_n(ns, &["link", "set", "eth0", "up"])?;
        }

        // Daemons started before IFF_RUNNING (about 0.8 s after link up) ignore the interface
        // until their next rescan, so callers must only get the lab once it is really up.
        for node in &self.nodes {
            wait_until(READY_TIMEOUT, || {
                Ok(operstate(&node.ns, "eth0")? == "UP" && !has_tentative(&node.ns, "eth0")?)
            })
            .with_context(|| format!("eth0 in {} did not come up", node.ns))?;
        }
        Ok(())
    }

    /// Tears down every namespace named `<prefix>-sw` or `<prefix>-*`: SIGTERM to the
    /// processes inside (`ip netns pids`), up to 2 s grace, SIGKILL the rest, `ip netns del`.
    /// Idempotent; deleting the namespaces removes the veth pairs and the bridge.
    pub fn down(prefix: &str) -> Result<()> {
        ensure!(valid_label(prefix), "bad lab prefix {prefix:?}");
        let mine: Vec<String> = list_namespaces()?
            .into_iter()
            .filter(|ns| ns.starts_with(&format!("{prefix}-")))
            .collect();
        if mine.is_empty() {
            return Ok(());
        }
        for ns in &mine {
            for pid in netns_pids(ns) {
                send_signal(pid, Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline && mine.iter().any(|ns| !netns_pids(ns).is_empty()) {
            thread::sleep(POLL);
        }
        for ns in &mine {
            for pid in netns_pids(ns) {
                send_signal(pid, Signal::SIGKILL);
            }
        }
        let mut errors = Vec::new();
        for ns in &mine {
            if let Err(e) = run(ip().args(["netns", "del", ns])) {
                errors.push(format!("{e:#}"));
            }
        }
        ensure!(
            errors.is_empty(),
            "lab {prefix} teardown: {}",
            errors.join("; ")
        );
        Ok(())
    }

    /// The prefix given to [`Lab::up`].
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Name of the switch namespace (`<prefix>-sw`).
    pub fn switch_ns(&self) -> &str {
        &self.switch_ns
    }

    /// All nodes, in the order given to [`Lab::up`].
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node called `name`; panics if the lab has none, which is a bug in the test.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("lab {} has no node {name:?}", self.prefix))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = Lab::down(&self.prefix) {
            eprintln!("virtgate-testlab: {e:#}");
        }
    }
}

/// PIDs inside a namespace; empty if the namespace is gone or empty.
pub fn netns_pids(ns: &str) -> Vec<u32> {
    ip().args(["netns", "pids", ns])
        .stderr(std::process::Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
