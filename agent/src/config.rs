//! The `[agent]` configuration section.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the agent keeps its key, certificate and enrollment by default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/virtgate-agent";
/// libvirtd's read-write socket (monolithic daemon); `virtqemud-sock` for modular daemons.
pub const DEFAULT_LIBVIRT_SOCKET: &str = "/run/libvirt/libvirt-sock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// TLS listeners for the gateway (IPv6 ones are IPv6-only, so both families can be listed).
    pub listen: Vec<SocketAddr>,
    /// The name announced over mDNS (default: this machine's short host name).
    pub hostname: Option<String>,
    /// Key pair, self-signed certificate, OPAQUE keys and enrollment (0700; files 0600).
    pub state_dir: PathBuf,
    /// The local libvirt daemon's read-write UNIX socket.
    pub libvirt_socket: PathBuf,
    /// Announce this host as `_libvirt._tcp` over mDNS.
    pub announce: bool,
    /// `/metrics`, `/healthz`; loopback only.
    pub metrics_listen: SocketAddr,
    /// Connections served at once; more are closed at accept.
    pub max_connections: usize,
    /// Budget for the TLS handshake and the PAKE check together.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A relayed connection with no byte in either direction for this long is closed (libvirt
    /// keepalive sends one every 5 s on live connections).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Failed checks one source address may cause per minute; past that it is refused at
    /// accept until the minute is over.
    pub max_failed_checks_per_minute: u32,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                SocketAddr::from(([0, 0, 0, 0], 16514)),
                SocketAddr::from(([0u16; 8], 16514)),
            ],
            hostname: None,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            libvirt_socket: PathBuf::from(DEFAULT_LIBVIRT_SOCKET),
            announce: true,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 16515)),
            max_connections: 256,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            max_failed_checks_per_minute: 10,
        }
    }
}

impl AgentConfig {
    /// Problems reading cannot catch, each starting with its key.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.listen.is_empty() {
            problems.push("agent.listen: list at least one address".into());
        }
        if !self.metrics_listen.ip().to_canonical().is_loopback() {
            problems.push(format!(
                "agent.metrics_listen: {} is not a loopback address; the agent serves /metrics on \
                 loopback only (scrape it through a local exporter or an SSH tunnel)",
                self.metrics_listen
            ));
        }
        if self.max_connections == 0 {
            problems.push("agent.max_connections: must be at least 1".into());
        }
        if self.max_failed_checks_per_minute == 0 {
            problems.push("agent.max_failed_checks_per_minute: must be at least 1".into());
        }
        for (key, value) in [
            ("handshake_timeout", self.handshake_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if value.is_zero() {
                problems.push(format!("agent.{key}: must be longer than 0s"));
            }
        }
        problems
    }
}
