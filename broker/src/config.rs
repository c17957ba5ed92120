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
    /// The API and `/metrics`. Plain HTTP only on loopback; any other address needs
    /// `tls_cert_file`/`tls_key_file` (`virtgate up` issues a development certificate).
    pub listen: SocketAddr,
    /// The API's TLS certificate (PEM, chain allowed) and key: with them it serves HTTPS.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// CAs (PEM) whose client certificates may read the inventory (proxies present their
    /// backend identity). Setting it makes reads need authentication on loopback too.
    pub proxy_ca_files: Vec<PathBuf>,
    /// A bearer token that may read the inventory but not change it (proxies send it with
    /// `--broker-token-file`); generated (0600) at start when the file does not exist. Setting
    /// it makes reads need authentication on loopback too.
    pub read_token_file: Option<PathBuf>,
    /// Watch long-polls (`GET /v1/watch`) held at once; more are answered 503 at once.
    pub max_watchers: usize,
    /// Browse the LAN for `_libvirt._tcp` hosts (mDNS). Static hosts are probed either way.
    pub discovery: bool,
    /// Hosts listed here are inventoried whether or not they announce themselves.
    pub hosts: Vec<StaticHost>,
    /// Names (globs with `*` and `?`, matched without regard to case) of LAN hosts never to
    /// inventory, however often they announce themselves.
    pub ignore_hosts: Vec<String>,
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
    /// Gateway keys (SPKI SHA-256 pins) that enrolled agents accept besides the broker's own
    /// client identity (`client_cert_file`): other gateway replicas, or a new key added before
    /// the old one retires. Given to agents at enrollment and at each `virtgate enroll --rotate`.
    pub agent_gateway_pins: Vec<String>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("virtgate-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 16580)),
            tls_cert_file: None,
            tls_key_file: None,
            proxy_ca_files: Vec::new(),
            read_token_file: None,
            max_watchers: 64,
            discovery: true,
            hosts: Vec::new(),
            ignore_hosts: Vec::new(),
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
            agent_gateway_pins: Vec::new(),
        }
    }
}

/// Problems with the `[broker]` section that reading it cannot catch, each starting with the
/// key it is about.
impl BrokerConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, files) in [
            ("trusted_ca_files", &self.trusted_ca_files),
            ("proxy_ca_files", &self.proxy_ca_files),
        ] {
            for path in files.iter().filter(|p| !p.is_file()) {
                problems.push(format!(
                    "broker.{key}: {} is not a readable file",
                    path.display()
                ));
            }
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
            ("tls_cert_file", self.tls_cert_file.as_ref()),
            ("tls_key_file", self.tls_key_file.as_ref()),
        ] {
            if let Some(path) = path.filter(|p| !p.is_file()) {
                problems.push(format!(
                    "broker.{key}: {} is not a readable file",
                    path.display()
                ));
            }
        }
        for (cert, key, names) in [
            (
                &self.client_cert_file,
                &self.client_key_file,
                "broker.client_cert_file / broker.client_key_file",
            ),
            (
                &self.tls_cert_file,
                &self.tls_key_file,
                "broker.tls_cert_file / broker.tls_key_file",
            ),
        ] {
            if cert.is_some() != key.is_some() {
                problems.push(format!("{names}: set both or neither"));
            }
        }
        if let Some(dir) = self
            .read_token_file
            .as_ref()
            .and_then(|p| p.parent())
            .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
        {
            problems.push(format!(
                "broker.read_token_file: the directory {} does not exist; create it or choose another path",
                dir.display()
            ));
        }
        for pin in &self.agent_gateway_pins {
            if pin.parse::<virtgate_pki::Pin>().is_err() {
                problems.push(format!(
                    "broker.agent_gateway_pins: {pin:?} is not a SPKI SHA-256 pin (sha256:HEX)"
                ));
            }
        }
        if self.max_watchers == 0 {
            problems.push("broker.max_watchers: must be at least 1".into());
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

    /// Whether a discovered host named `name` is to be left out (`ignore_hosts`).
    pub fn ignores(&self, name: &str) -> bool {
        self.ignore_hosts.iter().any(|g| glob_matches(g, name))
    }

    /// Whether the API listens on a loopback address only (127.0.0.0/8, ::1, or either
    /// IPv4-mapped); a wildcard address is not loopback.
    pub fn listens_on_loopback(&self) -> bool {
        self.listen.ip().to_canonical().is_loopback()
    }

    /// Whether the API serves HTTPS.
    pub fn serves_tls(&self) -> bool {
        self.tls_cert_file.is_some() && self.tls_key_file.is_some()
    }

    /// Whether reading the inventory needs a client certificate or a token: always on a listener
    /// beyond loopback, and on loopback too once a read credential is configured.
    pub fn reads_need_auth(&self) -> bool {
        !self.listens_on_loopback()
            || !self.proxy_ca_files.is_empty()
            || self.read_token_file.is_some()
    }
}

/// `*` (any run of characters) and `?` (one character), without regard to ASCII case.
pub fn glob_matches(glob: &str, name: &str) -> bool {
    let (g, n): (Vec<char>, Vec<char>) = (
        glob.to_ascii_lowercase().chars().collect(),
        name.to_ascii_lowercase().chars().collect(),
    );
    let (mut gi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if gi < g.len() && (g[gi] == '?' || g[gi] == n[ni]) {
            gi += 1;
            ni += 1;
        } else if gi < g.len() && g[gi] == '*' {
            star = Some((gi, ni));
            gi += 1;
        } else if let Some((sg, sn)) = star {
            gi = sg + 1;
            ni = sn + 1;
            star = Some((sg, sn + 1));
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod glob_tests {
    use super::glob_matches;

    #[test]
    fn ignore_globs_match_whole_names_without_regard_to_case() {
        assert!(glob_matches("lab-*", "LAB-7"));
        assert!(glob_matches("h?", "h1"));
        assert!(glob_matches("*", "anything"));
        assert!(!glob_matches("h?", "h10"));
        assert!(!glob_matches("lab-*", "h1"));
        assert!(glob_matches("a*b*c", "axxbyyc"));
    }
}
