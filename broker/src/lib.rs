//! The broker: the inventory of virtualization hosts and of the certificates they present.
//!
//! Owns: consuming discovery events and static hosts, probing every address of every host with a
//! TLS handshake, applying the certificate judge of `virtgate-pki` to what they present
//! (findings), deciding trust (CA, approved SPKI pins, `changed` alarms) in a pure state machine,
//! the durable SQLite store and event log, serving the `/v1` contract of `virtgate-api` with its
//! long-poll watch, and `/metrics`.
//! Must not: relay libvirt traffic (that is `virtgate-proxy`); trust anything a host announces
//! about itself over mDNS (names and TXT are labels, keys are verified); log secrets (the admin
//! token is only ever written to its 0600 file).
#![forbid(unsafe_code)]

mod api;
pub mod cert;
pub mod config;
mod findings;
pub mod inventory;
pub mod metrics;
pub mod model;
mod probe;
mod service;
mod store;
mod tls;

pub use config::{BrokerConfig, FirstSight, StaticHost};
pub use inventory::{Clock, SystemClock};
pub use model::{CertificateRow, Event, EventKind, Host, HostState, TrustState};
pub use service::{
    load_or_create_token, start, start_with, RunningBroker, ADMIN_TOKEN_FILE, DATABASE_FILE,
};

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot create the data directory {path}: {source}; set broker.data_dir / --data-dir to a writable place")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("admin token {path}: {source}")]
    Token {
        path: String,
        source: std::io::Error,
    },
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
}
