//! The `[proxy]` configuration section.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
}

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
        }
    }
}
