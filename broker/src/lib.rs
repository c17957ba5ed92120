//! The broker: the inventory of virtualization hosts and of the certificates they present.
//!
//! Owns: consuming discovery events and static hosts, probing every address of every host with a
//! TLS handshake, applying the certificate judge of `virtgate-pki` to what they present
//! (findings), deciding trust (CA, approved SPKI pins, `changed` alarms) in a pure state machine,
//! the durable SQLite store and event log, serving the `/v1` contract of `virtgate-api` with its
//! long-poll watch, and `/metrics` — over HTTPS (plain HTTP on loopback only), with reads
//! authenticated by client certificate or token beyond loopback and changes by the admin token;
//! the users who may log in at the gateway with a password (their verifiers only, in a 0600
//! file, served to gateways) and the gateway's credentials for hosts that demand SASL (one 0600
//! file per host, never served back).
//! Must not: relay libvirt traffic (that is `virtgate-proxy`); trust anything a host announces
//! about itself over mDNS (names and TXT are labels, keys are verified); log secrets (tokens are
//! only ever written to their 0600 files; passwords and verifiers are never logged); serve plain
//! HTTP beyond loopback; keep a user's password (only its verifiers).
#![forbid(unsafe_code)]

mod api;
pub mod cert;
pub mod config;
pub mod enroll;
mod findings;
pub mod http_path;
pub mod inventory;
pub mod metrics;
pub mod model;
mod probe;
mod service;
mod store;
mod tls;
mod token;
pub mod users;

pub use config::{BrokerConfig, FirstSight, StaticHost};
pub use inventory::{Clock, SystemClock};
pub use model::{CertificateRow, Event, EventKind, Host, HostState, TrustState};
pub use service::{
    start, start_with, ProbeRequests, RunningBroker, ADMIN_TOKEN_FILE, DATABASE_FILE,
    ON_DEMAND_MIN_INTERVAL,
};
pub use token::{load_or_create_token, TOKEN_MODE};

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot create the data directory {path}: {source}; set broker.data_dir / --data-dir to a writable place")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("token file {path}: {source}; check the path and its permissions (the broker must be able to read and create it)")]
    Token {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "token file {path} is readable by group or others (mode {mode:o}): whoever could read it \
         may hold the token. Delete it to have the broker generate a new one (mode 600) at its next \
         start, or, if nobody else could have read it, `chmod 600 {path}`"
    )]
    TokenExposed { path: String, mode: u32 },
    #[error(
        "broker.listen {addr} is not a loopback address, and without TLS the API would send the \
         inventory (and accept the admin token) in clear text: set broker.tls_cert_file and \
         broker.tls_key_file (PEM; `virtgate pki issue server --name NAME --out DIR` makes \
         them), use `virtgate up`, which issues a development certificate, or listen on \
         127.0.0.1"
    )]
    PlainHttpBeyondLoopback { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}; choose another broker.listen address")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("broker configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Inventory(#[from] inventory::InventoryError),
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
    #[error(transparent)]
    Pem(#[from] virtgate_pki::PemError),
    #[error(transparent)]
    Discovery(#[from] virtgate_discovery::DiscoveryError),
    #[error(transparent)]
    Enrollment(#[from] enroll::tokens::TokenError),
}
