//! `virtgate agent` in front of a real libvirtd's UNIX socket, on loopback (no mDNS: the broker
//! finds it with `virtgate enroll --address`), and `virtgate enroll` against a [`Gateway`].
#![allow(clippy::disallowed_types)] // synchronous test code: std's clock is the right one

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use virtgate_testlab::libvirtd::Libvirtd;
use virtgate_testlab::LabProcess;

use super::gateway::Gateway;
use super::{free_port, VIRTGATE};

pub struct Agent {
    pub port: u16,
    pub metrics_port: u16,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub process: Option<LabProcess>,
}

/// What `virtgate enroll --json` answered.
pub struct Enrollment {
    pub id: String,
    pub token: String,
    /// The command to run on the host, split into arguments (without `virtgate`).
    pub command: Vec<String>,
}

/// `virtgate --config <gw> enroll ARGS…`.
pub fn enroll_cli(gw: &Gateway, args: &[&str]) -> Output {
    Command::new(VIRTGATE)
        .args(["--config", gw.config.to_str().unwrap(), "enroll"])
        .args(args)
        .output()
        .unwrap()
}

/// A token for `host` at `address` (`--ttl ttl`).
pub fn enroll(gw: &Gateway, host: &str, address: &str, ttl: &str) -> Enrollment {
    let out = enroll_cli(gw, &[host, "--address", address, "--ttl", ttl, "--json"]);
    assert!(
        out.status.success(),
        "virtgate enroll: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let command: Vec<String> = created["command"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(str::to_string)
        .collect();
    Enrollment {
        id: created["id"].as_str().unwrap().to_string(),
        token: created["token"].as_str().unwrap().to_string(),
        command,
    }
}

/// The token's state and detail in `virtgate enroll --list --json`.
pub fn token_state(gw: &Gateway, id: &str) -> (String, String) {
    let out = enroll_cli(gw, &["--list", "--json"]);
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    list.iter()
        .find(|t| t["id"] == id)
        .map(|t| {
            (
                t["state"].as_str().unwrap_or_default().to_string(),
                t["detail"].as_str().unwrap_or_default().to_string(),
            )
        })
        .unwrap_or_default()
}

impl Agent {
    /// An agent (not started) for `libvirtd`'s UNIX socket, its state under `dir`.
    pub fn new(dir: &Path, libvirtd: &Libvirtd) -> Agent {
        Agent {
            port: free_port(),
            metrics_port: free_port(),
            state_dir: dir.join("agent-state"),
            socket: libvirtd.unix_socket(),
            process: None,
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The flags that place this agent: loopback port, state, socket, no mDNS.
    fn placement(&self) -> Vec<String> {
        vec![
            "--listen".into(),
            self.address(),
            "--state-dir".into(),
            self.state_dir.display().to_string(),
            "--libvirt-socket".into(),
            self.socket.display().to_string(),
            "--no-announce".into(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{}", self.metrics_port),
        ]
    }

    /// Spawns `virtgate agent ARGS… <placement>` (e.g. the pasted enrollment command).
    pub fn spawn(&self, args: &[String]) -> LabProcess {
        let mut cmd = Command::new(VIRTGATE);
        cmd.args(args)
            .args(self.placement())
            .env("RUST_LOG", "info,virtgate_agent=debug");
        LabProcess::spawn(cmd).unwrap()
    }

    /// Runs the pasted enrollment command (plus placement) until it exits, at most `limit`.
    pub fn run_enrollment(&self, command: &[String], limit: Duration) -> (bool, String, String) {
        let mut process = self.spawn(command);
        let status = process.wait_timeout(limit);
        let stdout = {
            let mut lines = Vec::new();
            while let Some((_, line)) = process.recv_line_timeout(Duration::from_millis(10)) {
                lines.push(line);
            }
            lines.join("\n")
        };
        let stderr = process.stderr_text();
        if status.is_none() {
            process.stop(Duration::from_secs(2));
        }
        (status.is_some_and(|s| s.success()), stdout, stderr)
    }

    /// Starts the enrolled agent and waits until it serves.
    pub fn start(&mut self) {
        let mut process = self.spawn(&["agent".to_string()]);
        if process
            .wait_for_stderr("agent started", Duration::from_secs(10))
            .is_err()
        {
            panic!("agent did not start:\n{}", process.stderr_text());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(self.address()).is_err() {
            assert!(Instant::now() < deadline, "agent not listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.process = Some(process);
    }

    /// Enrolls this agent as `host` through `gw` and starts it.
    pub fn enroll_and_start(&mut self, gw: &Gateway, host: &str) -> Enrollment {
        let enrollment = enroll(gw, host, &self.address(), "10m");
        let (ok, stdout, stderr) =
            self.run_enrollment(&enrollment.command, Duration::from_secs(30));
        assert!(
            ok && stdout.contains(&format!("enrolled as {host}")),
            "enrollment: {stdout}\n{stderr}\ngateway:\n{}",
            gw.process.stderr_text()
        );
        gw.wait_trust(host, "enrolled");
        self.start();
        enrollment
    }

    /// The agent's own `/metrics`.
    pub fn metrics(&self) -> String {
        let addr = format!("127.0.0.1:{}", self.metrics_port).parse().unwrap();
        super::http(addr, "GET", "/metrics", None, None).unwrap().1
    }
}
