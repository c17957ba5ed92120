//! The inventory's vocabulary: hosts, their endpoints, states and trust.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::cert::{CertInfo, Finding};
use crate::probe::ProbeErrorReason;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// Not probed yet.
    Unknown,
    /// The last probe reached at least one address.
    Up,
    /// The last probe reached no address.
    Down,
    /// No longer announced on the LAN (goodbye, TTL expiry or failed verification).
    Absent,
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
    /// No key seen yet.
    Unknown,
    /// A key was seen and awaits an operator's approval.
    Pending,
    /// The chain verifies to a configured CA and covers the host name.
    TrustedCa,
    /// The presented key matches the approved SPKI pin.
    Pinned,
    /// The presented key differs from the approved pin: refuse the host until re-approved.
    Changed,
}

impl TrustState {
    pub const ALL: [TrustState; 5] = [
        Self::Unknown,
        Self::Pending,
        Self::TrustedCa,
        Self::Pinned,
        Self::Changed,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Pending => "pending",
            Self::TrustedCa => "trusted_ca",
            Self::Pinned => "pinned",
            Self::Changed => "changed",
        }
    }
    /// Whether a connection to a host in this state may be made on behalf of a client.
    pub fn is_trusted(self) -> bool {
        matches!(self, Self::TrustedCa | Self::Pinned)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostSource {
    Mdns,
    Static,
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
    /// Leaf first.
    #[serde(default)]
    pub chain: Vec<CertInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    /// Inventory key: the static name, or the short mDNS host name (`h1` for `h1.local.`).
    pub name: String,
    pub source: HostSource,
    /// mDNS instance name, for discovered hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub port: u16,
    pub addresses: Vec<IpAddr>,
    /// What the host announced in TXT: informational, never trusted.
    #[serde(default)]
    pub txt: BTreeMap<String, String>,
    pub state: HostState,
    pub trust: TrustState,
    /// Why the trust state is what it is.
    #[serde(default)]
    pub trust_detail: String,
    /// The approved SPKI SHA-256 pin (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    /// The SPKI SHA-256 of the leaf the host presents now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presented_pin: Option<String>,
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
            txt: BTreeMap::new(),
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

/// An entry of the event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    pub host: String,
    /// `appeared`, `removed`, `probe_failed`, `probe_recovered`, `cert_changed`, `key_changed`,
    /// `pending`, `approved`, `auto_pinned`, `ca_pinned`, `cert_renewed`, `forgotten`, `expired_retention`.
    pub kind: String,
    pub detail: String,
}

/// A certificate a host presents now, flattened for listings (`virtgate certs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertificateRow {
    pub host: String,
    pub address: IpAddr,
    pub role: String,
    #[serde(flatten)]
    pub cert: CertInfo,
    /// Seconds until `not_after` (negative when expired).
    pub expires_in: i64,
    pub findings: Vec<String>,
}
