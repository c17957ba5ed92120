//! The inventory's vocabulary as it crosses the wire: hosts, their endpoints, states and trust.
//!
//! The broker keeps its inventory in these types and serialises them as they are; a proxy or the
//! CLI reads them back. Enums that a newer broker may extend decode unknown values into a
//! variant that is never trusted, so an older follower degrades to "refuse" instead of failing
//! every update.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::cert::{CertInfo, Finding, Pin};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// The last probe reached at least one address.
    Up,
    /// The last probe reached no address.
    Down,
    /// No longer announced on the LAN (goodbye, TTL expiry or failed verification).
    Absent,
    /// Not probed yet (or a state this client does not know).
    #[serde(other)]
    Unknown,
}

impl HostState {
    pub const ALL: [HostState; 4] = [Self::Unknown, Self::Up, Self::Down, Self::Absent];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Down => "down",
            Self::Absent => "absent",
        }
    }
}

/// Whether virtgate (and so the proxy) may trust the key a host presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustState {
    /// A key was seen and awaits an operator's approval.
    Pending,
    /// The chain verifies to a configured CA and covers the host name.
    TrustedCa,
    /// The presented key matches the approved SPKI pin.
    Pinned,
    /// The presented key differs from the approved pin: refuse the host until re-approved.
    Changed,
    /// Enrolled through `virtgate agent` with a one-time token: its key is pinned by the
    /// enrollment, and every gateway connection also proves the per-host secret (PAKE).
    Enrolled,
    /// No key seen yet (or a state this client does not know: never trusted).
    #[serde(other)]
    Unknown,
}

impl TrustState {
    pub const ALL: [TrustState; 6] = [
        Self::Unknown,
        Self::Pending,
        Self::TrustedCa,
        Self::Pinned,
        Self::Changed,
        Self::Enrolled,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Pending => "pending",
            Self::TrustedCa => "trusted_ca",
            Self::Pinned => "pinned",
            Self::Changed => "changed",
            Self::Enrolled => "enrolled",
        }
    }
    /// Whether a connection to a host in this state may be made on behalf of a client.
    pub fn is_trusted(self) -> bool {
        matches!(self, Self::TrustedCa | Self::Pinned | Self::Enrolled)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostSource {
    Mdns,
    Static,
}

/// Why a probe failed; the label of `virtgate_probe_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeErrorReason {
    Timeout,
    Refused,
    Unreachable,
    Tls,
    NoCertificate,
    #[serde(other)]
    Other,
}

impl ProbeErrorReason {
    pub const ALL: [ProbeErrorReason; 6] = [
        Self::Timeout,
        Self::Refused,
        Self::Unreachable,
        Self::Tls,
        Self::NoCertificate,
        Self::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Refused => "refused",
            Self::Unreachable => "unreachable",
            Self::Tls => "tls",
            Self::NoCertificate => "no_certificate",
            Self::Other => "other",
        }
    }
}

/// The outcome of the last probe of one address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: IpAddr,
    pub probed_at: i64,
    pub duration_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<ProbeErrorReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<String>,
    /// What the host's libvirtd answered the probe's AUTH_LIST: `none`, `sasl` or `polkit`
    /// (absent when it sent no answer, e.g. it refused the probe's certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// Leaf first.
    #[serde(default)]
    pub chain: Vec<CertInfo>,
}

/// One host of the inventory, as `GET /v1/hosts` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    /// Inventory key: the static name, or the short mDNS host name (`h1` for `h1.local.`).
    pub name: String,
    pub source: HostSource,
    /// mDNS instance name, for discovered hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub port: u16,
    /// Where the gateway reaches the host. For a host with an approved pin: only addresses that
    /// presented that key.
    pub addresses: Vec<IpAddr>,
    /// Addresses announced on the LAN for a pinned host that have not presented its pinned key
    /// yet: probed, never used by the gateway until they do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_addresses: Vec<IpAddr>,
    /// What the host announced in TXT: informational, never trusted.
    #[serde(default)]
    pub txt: BTreeMap<String, String>,
    /// Enrolled through `virtgate agent`: the gateway reaches it with the agent check, and its
    /// key changes only by enrolling it again (`virtgate enroll`), never by approval.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub agent: bool,
    pub state: HostState,
    pub trust: TrustState,
    /// Why the trust state is what it is.
    #[serde(default)]
    pub trust_detail: String,
    /// The approved SPKI SHA-256 pin (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<Pin>,
    /// The SPKI SHA-256 of the leaf the host presents now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presented_pin: Option<Pin>,
    pub first_seen: i64,
    pub last_seen: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe: Option<i64>,
    /// Consecutive probes in which some address failed; drives the retry backoff.
    #[serde(default)]
    pub failed_probes: u32,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub findings: Vec<Finding>,
}

impl Host {
    pub fn new(
        name: &str,
        source: HostSource,
        port: u16,
        addresses: Vec<IpAddr>,
        now: i64,
    ) -> Self {
        Self {
            name: name.to_string(),
            source,
            instance: None,
            port,
            addresses,
            pending_addresses: Vec::new(),
            txt: BTreeMap::new(),
            agent: false,
            state: HostState::Unknown,
            trust: TrustState::Unknown,
            trust_detail: "not probed yet".into(),
            pin: None,
            presented_pin: None,
            first_seen: now,
            last_seen: now,
            last_probe: None,
            failed_probes: 0,
            endpoints: Vec::new(),
            findings: Vec::new(),
        }
    }

    /// The leaf presented on the first address that answered.
    pub fn leaf(&self) -> Option<&CertInfo> {
        self.endpoints.iter().find_map(|e| e.chain.first())
    }

    /// Earliest `not_after` of any leaf the host presents.
    pub fn earliest_expiry(&self) -> Option<i64> {
        self.endpoints
            .iter()
            .filter_map(|e| e.chain.first())
            .map(|c| c.not_after)
            .min()
    }
}

/// What happened to a host, as the event log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Appeared,
    Removed,
    ProbeFailed,
    ProbeRecovered,
    CertChanged,
    KeyChanged,
    Pending,
    Approved,
    AutoPinned,
    CaPinned,
    CertRenewed,
    Forgotten,
    ExpiredRetention,
    /// Enrolled (or enrolled again) through its agent with a one-time token.
    Enrolled,
    /// The per-host secret of an enrolled host was replaced.
    SecretRotated,
    /// A kind this client does not know (written by a newer broker).
    #[serde(other)]
    Other,
}

impl EventKind {
    pub const ALL: [EventKind; 16] = [
        Self::Appeared,
        Self::Removed,
        Self::ProbeFailed,
        Self::ProbeRecovered,
        Self::CertChanged,
        Self::KeyChanged,
        Self::Pending,
        Self::Approved,
        Self::AutoPinned,
        Self::CaPinned,
        Self::CertRenewed,
        Self::Forgotten,
        Self::ExpiredRetention,
        Self::Enrolled,
        Self::SecretRotated,
        Self::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Appeared => "appeared",
            Self::Removed => "removed",
            Self::ProbeFailed => "probe_failed",
            Self::ProbeRecovered => "probe_recovered",
            Self::CertChanged => "cert_changed",
            Self::KeyChanged => "key_changed",
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::AutoPinned => "auto_pinned",
            Self::CaPinned => "ca_pinned",
            Self::CertRenewed => "cert_renewed",
            Self::Forgotten => "forgotten",
            Self::ExpiredRetention => "expired_retention",
            Self::Enrolled => "enrolled",
            Self::SecretRotated => "secret_rotated",
            Self::Other => "other",
        }
    }

    /// The stored spelling back to the kind; unknown spellings are `Other`.
    pub fn parse(s: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .unwrap_or(Self::Other)
    }

    /// Whether an operator should look: logged as a warning, not as information.
    pub fn is_alarm(self) -> bool {
        matches!(self, Self::KeyChanged | Self::ProbeFailed)
    }
}

/// An entry of the event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    pub host: String,
    pub kind: EventKind,
    pub detail: String,
}

/// A certificate a host presents now, or one of the gateway's own (`host` "virtgate", no
/// address), flattened for listings (`virtgate certs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertificateRow {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    pub role: String,
    #[serde(flatten)]
    pub cert: CertInfo,
    /// Seconds until `not_after` (negative when expired).
    pub expires_in: i64,
    pub findings: Vec<String>,
}

/// One certificate a host has presented at one address, with when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertificateHistoryEntry {
    pub address: String,
    pub first_seen: i64,
    pub last_seen: i64,
    pub certificate: CertInfo,
}

/// `GET /v1/hosts/{name}`: the host, every certificate it presented, its recent events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostDetail {
    pub host: Host,
    pub certificate_history: Vec<CertificateHistoryEntry>,
    pub events: Vec<Event>,
}

/// `GET /v1/watch`: the whole inventory at `revision` of the broker start `epoch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchResponse {
    pub revision: u64,
    pub hosts: Vec<Host>,
    /// Random per broker start (128 bits, hex): revisions of another epoch are not comparable,
    /// so a follower that sees it change takes the answer as a fresh copy. Empty from brokers
    /// older than the field.
    #[serde(default)]
    pub epoch: String,
}

/// `POST /v1/hosts/{name}/approve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApproveRequest {
    /// SPKI SHA-256, 64 hex digits; must match what the host presents now.
    pub pin: String,
}

/// `POST /v1/hosts/{name}/forget`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetResponse {
    pub forgotten: String,
}

/// Every error answer: what happened and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_a_newer_broker_invents_are_read_as_never_trusted() {
        let trust: TrustState = serde_json::from_str("\"trusted_by_magic\"").unwrap();
        assert_eq!(trust, TrustState::Unknown);
        assert!(!trust.is_trusted());
        let state: HostState = serde_json::from_str("\"hibernating\"").unwrap();
        assert_eq!(state, HostState::Unknown);
        let kind: EventKind = serde_json::from_str("\"teleported\"").unwrap();
        assert_eq!(kind, EventKind::Other);
    }

    #[test]
    fn event_kinds_keep_their_stored_spelling() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), kind);
            assert_eq!(
                serde_json::to_string(&kind).unwrap(),
                format!("\"{}\"", kind.as_str())
            );
        }
        assert!(EventKind::KeyChanged.is_alarm());
        assert!(!EventKind::Approved.is_alarm());
    }
}
