//! Certificates as the inventory reports them, and the findings vocabulary.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One parsed certificate. `position` 0 is the leaf; higher positions are the chain the host
/// sent after it, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    /// SHA-256 of the DER certificate, hex.
    pub sha256: String,
    pub position: usize,
    pub subject: String,
    pub subject_cn: String,
    pub issuer: String,
    pub issuer_cn: String,
    /// Serial number, hex.
    pub serial: String,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// `RSA`, `EC P-256`, `EC P-384`, `Ed25519`, …
    pub key_type: String,
    pub key_bits: u32,
    pub signature_algorithm: String,
    /// SHA-256 of the SubjectPublicKeyInfo, hex: the pin.
    pub spki_sha256: String,
    pub key_usage: Vec<String>,
    pub key_usage_critical: bool,
    pub extended_key_usage: Vec<String>,
    pub is_ca: bool,
    pub self_signed: bool,
    pub has_san: bool,
}

/// The fixed findings vocabulary (see docs/broker.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    Expired,
    NotYetValid,
    ExpiringSoon,
    ExpiringCritical,
    CnOnly,
    NameNotCovered,
    UntrustedChain,
    SelfSigned,
    WeakKey,
    WeakSignature,
    NotServerAuth,
    Changed,
}

impl FindingKind {
    pub const ALL: [FindingKind; 12] = [
        Self::Expired,
        Self::NotYetValid,
        Self::ExpiringSoon,
        Self::ExpiringCritical,
        Self::CnOnly,
        Self::NameNotCovered,
        Self::UntrustedChain,
        Self::SelfSigned,
        Self::WeakKey,
        Self::WeakSignature,
        Self::NotServerAuth,
        Self::Changed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::ExpiringSoon => "expiring_soon",
            Self::ExpiringCritical => "expiring_critical",
            Self::CnOnly => "cn_only",
            Self::NameNotCovered => "name_not_covered",
            Self::UntrustedChain => "untrusted_chain",
            Self::SelfSigned => "self_signed",
            Self::WeakKey => "weak_key",
            Self::WeakSignature => "weak_signature",
            Self::NotServerAuth => "not_server_auth",
            Self::Changed => "changed",
        }
    }
}

/// A finding on one certificate (or, for `changed`, on the host), with a human explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: FindingKind,
    /// SHA-256 of the certificate concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    pub detail: String,
}
