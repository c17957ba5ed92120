//! The host agent (`virtgate agent`): the one thing a libvirt host needs so the gateway can
//! reach it without a CA — a TLS 1.3 endpoint with its own self-signed key, enrolled once with a
//! one-time token, after which it accepts only the pinned gateway keys and, on every connection,
//! the gateway's proof of the per-host secret (the PAKE of `virtgate-pake`, bound to the TLS
//! session), then relays to the local libvirt daemon's UNIX socket.
//!
//! Owns: its state directory (key pair, certificate, OPAQUE keys, enrollment: 0700/0600), its
//! TLS listener (TLS 1.3, no tickets, pinned client keys), the server side of enrollment,
//! rotation and the per-connection check, failed-check rate limiting per source, the relay to
//! libvirt (with the `0x01` byte a TLS libvirtd sends), its mDNS announcement (through
//! `virtgate-discovery`) and its own `/metrics` on loopback.
//! Must not: depend on the broker or the proxy; accept any TLS client whose key is not pinned,
//! or send any PAKE message before the client's key is checked; relay a single byte to libvirt
//! before the check passed; keep a per-host secret (only its OPAQUE record); log a token or a
//! secret; serve `/metrics` beyond loopback.
#![forbid(unsafe_code)]

pub mod config;
mod connection;
mod limiter;
pub mod metrics;
mod server;
#[cfg(test)]
mod specs;
pub mod state;
pub mod tls;

pub use config::AgentConfig;
pub use server::{enroll, serve, Enrolled, Options};

/// Why the agent cannot run; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("state directory {path}: {source}; check agent.state_dir (--state-dir) and that this user may write there")]
    State {
        path: String,
        source: std::io::Error,
    },
    #[error("the state directory {path} may be read by others (mode {mode:o}): it holds the agent's private key; `chmod 700 {path}` (and check who could read it)")]
    StateExposed { path: String, mode: u32 },
    #[error("{path} is unreadable or damaged; restore it from a backup, or remove the state directory and enroll the agent again")]
    Corrupt { path: String },
    #[error("cannot make a key pair or certificate: {0}")]
    Generate(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}; choose another agent.listen address (--listen) or stop what uses it")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("this agent is not enrolled yet: on the broker's side run `virtgate enroll HOST` and run the `virtgate agent --enroll …` command it prints here")]
    NotEnrolled,
    #[error("enrollment failed: {0}")]
    Enrollment(String),
    #[error("give the gateway's key pins with --gateway-pin sha256:… (the `virtgate enroll` command prints them)")]
    NoGatewayPins,
    #[error(transparent)]
    Discovery(#[from] virtgate_discovery::DiscoveryError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}
