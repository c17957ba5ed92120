//! The `[broker]` configuration section.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What happens the first time a host presents a key that no configured CA vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FirstSight {
    /// The host stays `pending` until an operator approves its key (`virtgate hosts approve`).
    Approve,
    /// Trust on first use: the first key seen is pinned automatically (development only).
    Tofu,
}

/// A host outside the LAN (or not announcing itself), listed in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticHost {
    /// The name clients use for this host; also checked against the certificate's SANs.
    pub name: String,
    /// Addresses to probe. Empty: the name is resolved with the system resolver at each probe.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    #[serde(default = "default_port")]
    pub port: u16,
}

fn default_port() -> u16 {
    virtgate_discovery::DEFAULT_LIBVIRT_TLS_PORT
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Where the SQLite inventory and the admin token live.
    pub data_dir: PathBuf,
    /// HTTP API and `/metrics`.
    pub listen: SocketAddr,
    /// Browse the LAN for `_libvirt._tcp` hosts (mDNS). Static hosts are probed either way.
    pub discovery: bool,
    /// Hosts listed here are inventoried whether or not they announce themselves.
    pub hosts: Vec<StaticHost>,
    /// How often every host is probed again.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// Connect + TLS handshake budget per address.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// Probes (hosts) in flight at once.
    pub probe_concurrency: usize,
    /// `expiring_soon` below this much validity left.
    #[serde(with = "humantime_serde")]
    pub warning_window: Duration,
    /// `expiring_critical` below this much validity left.
    #[serde(with = "humantime_serde")]
    pub critical_window: Duration,
    pub first_sight: FirstSight,
    /// PEM files of CAs whose certificates (with the host name covered) make a host `trusted_ca`.
    pub trusted_ca_files: Vec<PathBuf>,
    /// Client identity presented while probing (the proxy's backend identity), PEM.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// PEM files of the CAs that sign people's client certificates (the gateway's
    /// `proxy.client_ca_files`; `virtgate up` fills it from there). When set, every probe also
    /// checks whether users can connect to the host directly, around the gateway (finding
    /// `bypassable`).
    pub user_ca_files: Vec<PathBuf>,
    /// The private key of one of `user_ca_files`: the bypass check then signs a throwaway user
    /// certificate with it and knows for certain whether a host accepts users directly.
    /// `virtgate up` sets it with its development PKI.
    pub user_ca_key_file: Option<PathBuf>,
    /// Hosts not seen for this long are forgotten, with their certificates and series.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("virtgate-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 16580)),
            discovery: true,
            hosts: Vec::new(),
            probe_interval: Duration::from_secs(600),
            probe_timeout: Duration::from_secs(5),
            probe_concurrency: 32,
            warning_window: Duration::from_secs(30 * 86400),
            critical_window: Duration::from_secs(7 * 86400),
            first_sight: FirstSight::Approve,
            trusted_ca_files: Vec::new(),
            client_cert_file: None,
            client_key_file: None,
            user_ca_files: Vec::new(),
            user_ca_key_file: None,
            retention: Duration::from_secs(14 * 86400),
        }
    }
}

/// Problems with the `[broker]` section that reading it cannot catch, each starting with the
/// key it is about.
impl BrokerConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for path in self.trusted_ca_files.iter().filter(|p| !p.is_file()) {
            problems.push(format!(
                "broker.trusted_ca_files: {} is not a readable file",
                path.display()
            ));
        }
        for path in self.user_ca_files.iter().filter(|p| !p.is_file()) {
            problems.push(format!(
                "broker.user_ca_files: {} is not a readable file",
                path.display()
            ));
        }
        if self.user_ca_key_file.is_some() && self.user_ca_files.is_empty() {
            problems.push(
                "broker.user_ca_key_file: set broker.user_ca_files to the CA certificate it \
                 belongs to"
                    .into(),
            );
        }
        for (key, path) in [
            ("client_cert_file", self.client_cert_file.as_ref()),
            ("client_key_file", self.client_key_file.as_ref()),
            ("user_ca_key_file", self.user_ca_key_file.as_ref()),
        ] {
            if let Some(path) = path.filter(|p| !p.is_file()) {
                problems.push(format!(
                    "broker.{key}: {} is not a readable file",
                    path.display()
                ));
            }
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            problems.push(
                "broker.client_cert_file / broker.client_key_file: set both or neither".into(),
            );
        }
        for (key, value) in [
            ("probe_interval", self.probe_interval),
            ("probe_timeout", self.probe_timeout),
        ] {
            if value.is_zero() {
                problems.push(format!("broker.{key}: must be longer than 0s"));
            }
        }
        if self.critical_window > self.warning_window {
            problems.push(
                "broker.critical_window: must not be longer than broker.warning_window".into(),
            );
        }
        for (i, host) in self.hosts.iter().enumerate() {
            if host.name.trim().is_empty() {
                problems.push(format!("broker.hosts[{i}].name: must not be empty"));
            }
        }
        problems
    }
}
