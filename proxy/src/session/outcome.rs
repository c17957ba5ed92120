//! How a connection ended: one typed result, one log line, one counter — and refusals, which
//! are sent to the client and recorded in one place.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::{info, warn};
use virtgate_rpc::{error_reply, ErrorDomain, ErrorNumber, Header, PacketStream};

use crate::metrics::ProxyMetrics;
use crate::policy::Mode;

/// The label of `virtgate_proxy_connections_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionResult {
    /// Ended by the client or the host, or by the gateway stopping.
    Closed,
    TlsFailed,
    DnNotAllowed,
    ProtocolError,
    Denied,
    UnknownHost,
    UntrustedHost,
    NoHost,
    BackendUnreachable,
    BackendRejected,
    IdleTimeout,
    RefusedCapacity,
    /// The connection name is not one the gateway forwards (driver, parameters, path).
    BadUri,
    /// The host refused the forwarded CONNECT_OPEN; the client got its error.
    OpenFailed,
    /// The client called something that changes who the connection is; answered and closed.
    CallRefused,
    /// The session lost its grounds while open (identity revoked, host forgotten or re-keyed).
    Revoked,
    /// Too many connections from the client's address are still in their handshake.
    RefusedSource,
    /// The client's password login failed (or it opened without the login it was asked for).
    LoginFailed,
    /// The gateway's own SASL login to the host failed (no, wrong or stale credentials).
    BackendLoginFailed,
}

impl ConnectionResult {
    pub const ALL: [ConnectionResult; 19] = [
        Self::Closed,
        Self::TlsFailed,
        Self::DnNotAllowed,
        Self::ProtocolError,
        Self::Denied,
        Self::UnknownHost,
        Self::UntrustedHost,
        Self::NoHost,
        Self::BackendUnreachable,
        Self::BackendRejected,
        Self::IdleTimeout,
        Self::RefusedCapacity,
        Self::BadUri,
        Self::OpenFailed,
        Self::CallRefused,
        Self::Revoked,
        Self::RefusedSource,
        Self::LoginFailed,
        Self::BackendLoginFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::TlsFailed => "tls_failed",
            Self::DnNotAllowed => "dn_not_allowed",
            Self::ProtocolError => "protocol_error",
            Self::Denied => "denied",
            Self::UnknownHost => "unknown_host",
            Self::UntrustedHost => "untrusted_host",
            Self::NoHost => "no_host",
            Self::BackendUnreachable => "backend_unreachable",
            Self::BackendRejected => "backend_rejected",
            Self::IdleTimeout => "idle_timeout",
            Self::RefusedCapacity => "refused_capacity",
            Self::BadUri => "bad_uri",
            Self::OpenFailed => "open_failed",
            Self::CallRefused => "call_refused",
            Self::Revoked => "revoked",
            Self::RefusedSource => "refused_source",
            Self::LoginFailed => "login_failed",
            Self::BackendLoginFailed => "backend_login_failed",
        }
    }

    /// Ordinary ends are logged as information; the rest as warnings.
    fn is_ordinary(self) -> bool {
        matches!(self, Self::Closed | Self::IdleTimeout)
    }
}

/// Why a connection ended, for its log line and counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ended {
    pub result: ConnectionResult,
    pub detail: String,
}

impl Ended {
    pub(crate) fn new(result: ConnectionResult, detail: impl Into<String>) -> Self {
        Self {
            result,
            detail: detail.into(),
        }
    }

    pub(crate) fn closed(detail: impl Into<String>) -> Self {
        Self::new(ConnectionResult::Closed, detail)
    }
}

/// A refusal after the pre-open exchange: the libvirt error the client prints, and what the
/// log and metrics record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub result: ConnectionResult,
    pub code: ErrorNumber,
    pub domain: ErrorDomain,
    /// Sent to the client, which prints it.
    pub message: String,
    /// For the log line only.
    pub detail: String,
}

impl Refusal {
    /// A "no connection" refusal (`VIR_ERR_NO_CONNECT`) naming the problem.
    pub(crate) fn no_connect(
        result: ConnectionResult,
        message: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            result,
            code: ErrorNumber::NO_CONNECT,
            domain: ErrorDomain::FROM_REMOTE,
            message: message.into(),
            detail: detail.into(),
        }
    }

    /// Sends the refusal as the reply to `call`, then closes the client's side. Bounded: a
    /// client that stopped reading gets no more of the gateway's time.
    pub(crate) async fn send<S: AsyncWrite + Unpin>(
        self,
        client: &mut PacketStream<S>,
        call: &Header,
    ) -> Ended {
        let reply = error_reply(call, self.code, self.domain, &self.message);
        let _ = tokio::time::timeout(Duration::from_secs(5), client.write_packet(&reply)).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), client.get_mut().shutdown()).await;
        Ended::new(self.result, self.detail)
    }
}

/// What one log line says about a connection.
pub(crate) struct Outcome {
    pub peer: SocketAddr,
    pub identity: Option<String>,
    pub host: Option<String>,
    pub mode: Option<Mode>,
    pub calls: u64,
    pub to_host: u64,
    pub to_client: u64,
}

impl Outcome {
    pub(crate) fn new(peer: SocketAddr) -> Self {
        Self {
            peer,
            identity: None,
            host: None,
            mode: None,
            calls: 0,
            to_host: 0,
            to_client: 0,
        }
    }

    /// Counts the connection and writes its one log line.
    pub(crate) fn record(&self, ended: &Ended, metrics: &ProxyMetrics, took: Duration) {
        let result = ended.result.as_str();
        metrics.connections_total.with_label_values(&[result]).inc();
        let took_ms = (took.as_secs_f64() * 10_000.0).round() / 10.0;
        let peer = self.peer;
        let identity = self.identity.as_deref().unwrap_or("-");
        let host = self.host.as_deref().unwrap_or("-");
        let mode = self.mode.map_or("-", Mode::as_str);
        let (calls, to_host, to_client) = (self.calls, self.to_host, self.to_client);
        if ended.result.is_ordinary() {
            info!(%peer, identity, host, mode, result, took_ms, calls, to_host, to_client, "connection {}", ended.detail);
        } else {
            warn!(%peer, identity, host, mode, result, took_ms, calls, to_host, to_client, "connection refused or failed: {}", ended.detail);
        }
    }
}
