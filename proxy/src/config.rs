//! The `[proxy]` configuration section.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::{FrontAuth, LoginLimits};
use crate::policy::Rule;

/// A listener bound to one host, for clients that cannot set `?name=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostListener {
    pub listen: SocketAddr,
    pub host: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Whether `virtgate up` runs the proxy.
    pub enabled: bool,
    /// Client-facing TLS listeners (IPv4 and IPv6).
    #[serde(deserialize_with = "one_or_more_addresses")]
    pub listen: Vec<SocketAddr>,
    /// Extra listeners each bound to one host.
    pub host_listeners: Vec<HostListener>,
    /// The gateway's server certificate (PEM, chain allowed) and key. `virtgate up` generates
    /// development ones when unset.
    pub server_cert_file: Option<PathBuf>,
    pub server_key_file: Option<PathBuf>,
    /// CAs whose client certificates are accepted.
    pub client_ca_files: Vec<PathBuf>,
    /// Optional CRL (PEM or DER) for client certificates.
    pub crl_file: Option<PathBuf>,
    /// Subject DN globs allowed to connect at all (libvirt's `tls_allowed_dn_list`); empty: any
    /// DN from an accepted CA.
    pub allowed_dn: Vec<String>,
    /// The gateway's client identity towards hosts.
    pub backend_cert_file: Option<PathBuf>,
    pub backend_key_file: Option<PathBuf>,
    /// Where a CONNECT_OPEN name without a host goes; empty: such clients get an error.
    pub default_host: String,
    /// Per-identity host ACLs; first match wins; no match denies.
    pub rules: Vec<Rule>,
    /// Budget for the client's TLS handshake and its first RPC exchanges.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Budget for reaching a host (all addresses, happy eyeballs) including its TLS handshake.
    #[serde(with = "humantime_serde")]
    pub backend_connect_timeout: Duration,
    /// A relayed connection with no packet in either direction for this long is closed
    /// (libvirt keepalive sends one every 5 s on live connections).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A peer that accepts no relayed data for this long (it stopped reading) is cut off.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Connections served at once; more are refused at accept.
    pub max_connections: usize,
    /// Threads that serve connections, each connection staying on one (0: one per CPU).
    pub connection_threads: usize,
    /// `/metrics` for `virtgate proxy` (in `virtgate up` the broker serves them).
    pub metrics_listen: SocketAddr,
    /// Drivers a client may name in CONNECT_OPEN (`qemu://HOST/system`).
    pub allowed_drivers: Vec<String>,
    /// Paths the `test` driver may be opened with (it reads any file it is given).
    pub allowed_test_paths: Vec<String>,
    /// URI query parameters that may be forwarded (none by default: `socket=`, `command=`,
    /// `netcat=`, `pkipath=` and friends make the host's daemon connect onwards or run programs).
    pub allowed_uri_parameters: Vec<String>,
    /// RPC programs relayed besides REMOTE, KEEPALIVE, QEMU and LXC (numbers).
    pub allowed_programs: Vec<u32>,
    /// Close open sessions whose client certificate a reloaded CRL revokes, or whose host is
    /// forgotten, no longer trusted, or re-keyed.
    pub close_revoked_sessions: bool,
    /// Connections from one address that may be in their TLS handshake or pre-open exchange at
    /// once; more are refused at accept.
    pub max_handshakes_per_source: usize,
    /// On SIGTERM/SIGINT: stop accepting, then let open sessions go on for up to this long
    /// before closing them (0s: close them at once). A second signal closes them at once.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How often the TLS files are checked for changes; a change reloads them as SIGHUP does
    /// (0s: only on SIGHUP).
    #[serde(with = "humantime_serde")]
    pub tls_reload_interval: Duration,
    /// `virtgate proxy`: file keeping the last copy of the broker's inventory, read at start
    /// so a restart while the broker is away does not start empty.
    pub directory_cache_file: Option<PathBuf>,
    /// `virtgate proxy`: PEM file of the CA that issued the followed broker's certificate.
    pub broker_ca_file: Option<PathBuf>,
    /// `virtgate proxy`: SPKI SHA-256 pin of the followed broker's key (instead of, or besides,
    /// `broker_ca_file`).
    pub broker_pin: Option<String>,
    /// `virtgate proxy`: file holding the bearer token sent to the broker (its read token).
    pub broker_token_file: Option<PathBuf>,
    /// Per-host secrets of hosts enrolled through `virtgate agent`: one file per host, named
    /// after it (`v1 GENERATION HEX`), read at each connect. `virtgate up` uses the broker's
    /// `<broker.data_dir>/agent-secrets`; in Kubernetes, a Secret mounted here.
    pub agent_secret_dir: Option<PathBuf>,
    /// How clients authenticate: a certificate (the default), a certificate or a password, or
    /// both.
    pub front_auth: FrontAuth,
    /// Failed password logins of one user name within `login_failure_window` after which its
    /// logins are refused until the window has passed.
    pub login_failures_per_user: u32,
    /// The same per source address.
    pub login_failures_per_source: u32,
    #[serde(with = "humantime_serde")]
    pub login_failure_window: Duration,
    /// Credentials of hosts whose libvirtd demands a SASL login, one file per host
    /// (`virtgate hosts credentials`); `virtgate up` uses `<broker.data_dir>/host-credentials`.
    pub host_credentials_dir: Option<PathBuf>,
}

/// A list of `HOST:PORT` addresses, or one address on its own: what an operator writes in
/// `VIRTGATE_PROXY__LISTEN=127.0.0.1:17514` (a TOML array in an environment variable is easy to
/// get wrong).
fn one_or_more_addresses<'de, D>(deserializer: D) -> Result<Vec<SocketAddr>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Addresses;
    impl<'de> serde::de::Visitor<'de> for Addresses {
        type Value = Vec<SocketAddr>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an address HOST:PORT, or a list of them")
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
            text.parse().map(|a| vec![a]).map_err(E::custom)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut addresses = Vec::new();
            while let Some(address) = seq.next_element()? {
                addresses.push(address);
            }
            Ok(addresses)
        }
    }
    deserializer.deserialize_any(Addresses)
}

/// The drivers libvirt ships that a gateway user may reach.
pub const DEFAULT_DRIVERS: &[&str] = &[
    "qemu",
    "test",
    "lxc",
    "xen",
    "ch",
    "bhyve",
    "vz",
    "network",
    "storage",
    "nodedev",
    "secret",
    "interface",
    "nwfilter",
];

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: vec![
                SocketAddr::from(([0, 0, 0, 0], 16514)),
                "[::]:16514".parse().expect("valid"),
            ],
            host_listeners: Vec::new(),
            server_cert_file: None,
            server_key_file: None,
            client_ca_files: Vec::new(),
            crl_file: None,
            allowed_dn: Vec::new(),
            backend_cert_file: None,
            backend_key_file: None,
            default_host: String::new(),
            rules: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
            backend_connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            write_timeout: Duration::from_secs(60),
            max_connections: 5000,
            connection_threads: 0,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 16581)),
            allowed_drivers: DEFAULT_DRIVERS.iter().map(|d| d.to_string()).collect(),
            allowed_test_paths: vec!["/default".into()],
            allowed_uri_parameters: Vec::new(),
            allowed_programs: Vec::new(),
            close_revoked_sessions: true,
            max_handshakes_per_source: 64,
            drain_timeout: Duration::from_secs(30),
            tls_reload_interval: Duration::from_secs(10),
            directory_cache_file: None,
            broker_ca_file: None,
            broker_pin: None,
            broker_token_file: None,
            agent_secret_dir: None,
            front_auth: FrontAuth::Certificate,
            login_failures_per_user: 10,
            login_failures_per_source: 30,
            login_failure_window: Duration::from_secs(300),
            host_credentials_dir: None,
        }
    }
}

/// Problems with the `[proxy]` section that reading it cannot catch, each starting with the
/// key it is about.
impl ProxyConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(dir) = self.agent_secret_dir.as_ref().filter(|d| !d.is_dir()) {
            problems.push(format!(
                "proxy.agent_secret_dir: {} is not a directory (the broker writes one file per \
                 enrolled host into its <broker.data_dir>/agent-secrets; docs/agent.md)",
                dir.display()
            ));
        }
        let files = [
            ("server_cert_file", self.server_cert_file.as_ref()),
            ("server_key_file", self.server_key_file.as_ref()),
            ("crl_file", self.crl_file.as_ref()),
            ("backend_cert_file", self.backend_cert_file.as_ref()),
            ("backend_key_file", self.backend_key_file.as_ref()),
            ("broker_ca_file", self.broker_ca_file.as_ref()),
            ("broker_token_file", self.broker_token_file.as_ref()),
        ];
        for (key, path) in files {
            if let Some(path) = path.filter(|p| !p.is_file()) {
                problems.push(format!(
                    "proxy.{key}: {} is not a readable file",
                    path.display()
                ));
            }
        }
        for path in self.client_ca_files.iter().filter(|p| !p.is_file()) {
            problems.push(format!(
                "proxy.client_ca_files: {} is not a readable file",
                path.display()
            ));
        }
        for (a, b, first, second) in [
            (
                &self.server_cert_file,
                &self.server_key_file,
                "server_cert_file",
                "server_key_file",
            ),
            (
                &self.backend_cert_file,
                &self.backend_key_file,
                "backend_cert_file",
                "backend_key_file",
            ),
        ] {
            if a.is_some() != b.is_some() {
                problems.push(format!(
                    "proxy.{first} / proxy.{second}: set both or neither"
                ));
            }
        }
        if let Some(Err(e)) = self
            .broker_pin
            .as_deref()
            .map(str::parse::<virtgate_pki::Pin>)
        {
            problems.push(format!("proxy.broker_pin: {e}"));
        }
        if let Err(e) = crate::policy::Policy::new(&self.rules) {
            problems.push(format!("proxy.rules: {e}"));
        }
        if let Err(e) = crate::policy::DnAllowList::new(&self.allowed_dn) {
            problems.push(format!("proxy.allowed_dn: {e}"));
        }
        for (key, value) in [
            ("handshake_timeout", self.handshake_timeout),
            ("backend_connect_timeout", self.backend_connect_timeout),
            ("idle_timeout", self.idle_timeout),
            ("write_timeout", self.write_timeout),
            ("login_failure_window", self.login_failure_window),
        ] {
            if value.is_zero() {
                problems.push(format!("proxy.{key}: must be longer than 0s"));
            }
        }
        if self.max_connections == 0 {
            problems.push("proxy.max_connections: must be at least 1".into());
        }
        self.validate_passwords(&mut problems);
        if self.max_handshakes_per_source == 0 {
            problems.push("proxy.max_handshakes_per_source: must be at least 1".into());
        }
        for driver in &self.allowed_drivers {
            if driver.is_empty() || !driver.bytes().all(|b| b.is_ascii_alphanumeric()) {
                problems.push(format!(
                    "proxy.allowed_drivers: {driver:?} is not a driver name (letters and digits, e.g. qemu)"
                ));
            }
        }
        for path in self
            .allowed_test_paths
            .iter()
            .filter(|p| !p.starts_with('/'))
        {
            problems.push(format!(
                "proxy.allowed_test_paths: {path:?} must start with / (as in test:///default)"
            ));
        }
        problems
    }

    /// The keys about passwords: limits, the host-credentials directory, `user:` rules.
    fn validate_passwords(&self, problems: &mut Vec<String>) {
        if self.login_failures_per_user == 0 || self.login_failures_per_source == 0 {
            problems.push(
                "proxy.login_failures_per_user / login_failures_per_source: must be at least 1"
                    .into(),
            );
        }
        if let Some(dir) = self.host_credentials_dir.as_ref().filter(|d| !d.is_dir()) {
            problems.push(format!(
                "proxy.host_credentials_dir: {} is not a directory (the broker keeps one file per \
                 host in <broker.data_dir>/host-credentials; `virtgate hosts credentials` writes them)",
                dir.display()
            ));
        }
        for rule in self
            .rules
            .iter()
            .filter(|r| r.identity.starts_with(crate::policy::USER_PREFIX))
        {
            let name = &rule.identity[crate::policy::USER_PREFIX.len()..];
            if name.is_empty() {
                problems.push(
                    "proxy.rules: identity \"user:\" names no user; write user:NAME or user:GLOB"
                        .into(),
                );
            }
        }
    }

    /// The TLS files as the gateway reads them; every one must be set (`virtgate up` sets unset
    /// ones to its development PKI first). `backend_cas` are the CAs hosts may be vouched for by.
    pub fn tls_files(&self, backend_cas: Vec<PathBuf>) -> Result<crate::TlsFiles, String> {
        let need = |v: &Option<PathBuf>, key: &str| {
            v.clone().ok_or_else(|| format!("proxy.{key} is not set; set it (see docs/proxy.md), or use `virtgate up`, which generates a development PKI"))
        };
        if self.client_ca_files.is_empty() {
            return Err("proxy.client_ca_files is empty; list the CA(s) whose client certificates may connect".into());
        }
        Ok(crate::TlsFiles {
            server_cert: need(&self.server_cert_file, "server_cert_file")?,
            server_key: need(&self.server_key_file, "server_key_file")?,
            client_cas: self.client_ca_files.clone(),
            crl: self.crl_file.clone(),
            backend_cert: need(&self.backend_cert_file, "backend_cert_file")?,
            backend_key: need(&self.backend_key_file, "backend_key_file")?,
            backend_cas,
        })
    }
}

impl ProxyConfig {
    /// The limits on failed password logins.
    pub fn login_limits(&self) -> LoginLimits {
        LoginLimits {
            per_user: self.login_failures_per_user,
            per_source: self.login_failures_per_source,
            window: self.login_failure_window,
        }
    }

    /// The connection names the gateway forwards.
    pub fn uri_rules(&self) -> crate::UriRules {
        crate::UriRules {
            drivers: self.allowed_drivers.clone(),
            test_paths: self.allowed_test_paths.clone(),
            parameters: self.allowed_uri_parameters.clone(),
        }
    }
}
