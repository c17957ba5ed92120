//! One judge for single certificates: what a certificate says ([`CertInfo`]) and what is wrong
//! with it ([`Finding`]), in the fixed vocabulary the broker's JSON API and metrics, and
//! `virtgate pki check`, share.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;
use x509_parser::x509::X509Name;

use crate::dn::dn_string;
use crate::identity::{name_is_covered, Pin};

/// One parsed certificate. `position` 0 is the leaf; higher positions are the chain sent after
/// it, in order. Part of the broker's JSON API: field names and shapes are stable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    /// SHA-256 of the DER certificate, hex.
    pub sha256: String,
    pub position: usize,
    /// The subject DN as [`subject_dn`](crate::subject_dn) writes it: `C=GB,O=Example,CN=h1`.
    pub subject: String,
    pub subject_cn: String,
    /// The issuer DN, written the same way.
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
    /// SHA-256 of the SubjectPublicKeyInfo, 64 hex digits in JSON: the pin.
    pub spki_sha256: Pin,
    pub key_usage: Vec<String>,
    pub key_usage_critical: bool,
    pub extended_key_usage: Vec<String>,
    pub is_ca: bool,
    pub self_signed: bool,
    /// Whether a subjectAltName extension is present (whatever it lists).
    pub has_san: bool,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "certificate at chain position {position} cannot be parsed ({reason}); the peer or file \
     holds something that is not a DER X.509 certificate: check what it is configured to present"
)]
pub struct CertError {
    pub position: usize,
    pub reason: String,
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
    /// Produced by the broker from chain verification, never by [`certificate_findings`].
    UntrustedChain,
    SelfSigned,
    WeakKey,
    WeakSignature,
    NotServerAuth,
    NotClientAuth,
    /// libvirt's `virNetTLSCertCheckKeyUsage`: refused in every session.
    LibvirtKeyUsage,
    /// Produced by the broker when the presented key differs from the approved pin, never by
    /// [`certificate_findings`].
    Changed,
    /// Produced by the broker's bypass check, never by [`certificate_findings`]: users can (or,
    /// as far as the host's TLS certificate request tells, probably can) connect to the host
    /// directly, around the gateway. The detail starts with `certain:` or `possible:`.
    Bypassable,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Works today, needs attention.
    Warning,
    /// libvirt or the gateway refuses it, or it is unsafe.
    Problem,
}

impl FindingKind {
    pub const ALL: [FindingKind; 15] = [
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
        Self::NotClientAuth,
        Self::LibvirtKeyUsage,
        Self::Changed,
        Self::Bypassable,
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
            Self::NotClientAuth => "not_client_auth",
            Self::LibvirtKeyUsage => "libvirt_key_usage",
            Self::Changed => "changed",
            Self::Bypassable => "bypassable",
        }
    }

    pub fn severity(self) -> Severity {
        match self {
            Self::ExpiringSoon | Self::ExpiringCritical | Self::SelfSigned => Severity::Warning,
            Self::Expired
            | Self::NotYetValid
            | Self::CnOnly
            | Self::NameNotCovered
            | Self::UntrustedChain
            | Self::WeakKey
            | Self::WeakSignature
            | Self::NotServerAuth
            | Self::NotClientAuth
            | Self::LibvirtKeyUsage
            | Self::Changed
            | Self::Bypassable => Severity::Problem,
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

/// Expiry thresholds: less than `critical` left is `expiring_critical`, less than `warning`
/// (and not critical) is `expiring_soon`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub warning: Duration,
    pub critical: Duration,
}

/// What a certificate is used as, which decides the rules that apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A TLS server's certificate (a libvirt host, the gateway's listener).
    Server,
    /// A TLS client's certificate (a libvirt client, the gateway towards hosts).
    Client,
    /// A leaf of unknown purpose: the rules that depend on the purpose (EKU, SANs) are skipped.
    Any,
    /// A CA certificate from a trust file (`cacert.pem`).
    Authority,
}

/// Hex SHA-256 of `data`: a certificate's fingerprint, as [`CertInfo::sha256`] holds it.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Parses a DER certificate into a [`CertInfo`].
pub fn parse_certificate(der: &[u8], position: usize) -> Result<CertInfo, CertError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError {
        position,
        reason: e.to_string(),
    })?;
    let (dns_names, ip_addresses, has_san) = subject_alt_names(&cert);
    let (key_type, key_bits) = key_description(&cert);
    let (key_usage, key_usage_critical) = match cert.key_usage() {
        Ok(Some(ku)) => (key_usage_names(ku.value), ku.critical),
        _ => (Vec::new(), false),
    };
    Ok(CertInfo {
        sha256: sha256_hex(der),
        position,
        subject: dn_string(cert.subject()),
        subject_cn: first_cn(cert.subject()),
        issuer: dn_string(cert.issuer()),
        issuer_cn: first_cn(cert.issuer()),
        serial: hex::encode(cert.raw_serial()),
        dns_names,
        ip_addresses,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        key_type,
        key_bits,
        signature_algorithm: signature_name(&cert.signature_algorithm.algorithm.to_id_string()),
        spki_sha256: Pin::of_spki(cert.public_key().raw),
        key_usage,
        key_usage_critical,
        extended_key_usage: extended_key_usage_names(&cert),
        is_ca: matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca),
        self_signed: cert.subject().as_raw() == cert.issuer().as_raw(),
        has_san,
    })
}

/// DNS names, IP addresses, and whether the extension is there at all.
fn subject_alt_names(cert: &X509Certificate<'_>) -> (Vec<String>, Vec<IpAddr>, bool) {
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return (dns_names, ip_addresses, false);
    };
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(d) => dns_names.push(d.to_string()),
            GeneralName::IPAddress(bytes) => ip_addresses.extend(ip_from_bytes(bytes)),
            _ => {}
        }
    }
    (dns_names, ip_addresses, true)
}

fn first_cn(name: &X509Name<'_>) -> String {
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

fn key_description(cert: &X509Certificate<'_>) -> (String, u32) {
    let spki = cert.public_key();
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => ("RSA".into(), rsa.key_size() as u32),
        Ok(PublicKey::EC(point)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| match oid.to_id_string().as_str() {
                    "1.2.840.10045.3.1.7" => "P-256".to_string(),
                    "1.3.132.0.34" => "P-384".to_string(),
                    "1.3.132.0.35" => "P-521".to_string(),
                    other => other.to_string(),
                })
                .unwrap_or_else(|| "unknown curve".into());
            (format!("EC {curve}"), point.key_size() as u32)
        }
        Ok(PublicKey::DSA(_)) => ("DSA".into(), 0),
        Ok(PublicKey::GostR3410(_)) | Ok(PublicKey::GostR3410_2012(_)) => ("GOST".into(), 0),
        Ok(PublicKey::Unknown(_)) | Err(_) => {
            match spki.algorithm.algorithm.to_id_string().as_str() {
                "1.3.101.112" => ("Ed25519".into(), 256),
                "1.3.101.113" => ("Ed448".into(), 456),
                other => (other.to_string(), 0),
            }
        }
    }
}

fn key_usage_names(ku: &x509_parser::extensions::KeyUsage) -> Vec<String> {
    let flags = [
        (ku.digital_signature(), "digitalSignature"),
        (ku.non_repudiation(), "nonRepudiation"),
        (ku.key_encipherment(), "keyEncipherment"),
        (ku.data_encipherment(), "dataEncipherment"),
        (ku.key_agreement(), "keyAgreement"),
        (ku.key_cert_sign(), "keyCertSign"),
        (ku.crl_sign(), "cRLSign"),
    ];
    flags
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| n.to_string())
        .collect()
}

fn extended_key_usage_names(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(eku)) = cert.extended_key_usage() else {
        return Vec::new();
    };
    let known = [
        (eku.value.any, "any"),
        (eku.value.server_auth, "serverAuth"),
        (eku.value.client_auth, "clientAuth"),
    ];
    known
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| name.to_string())
        .chain(eku.value.other.iter().map(|oid| oid.to_id_string()))
        .collect()
}

fn signature_name(oid: &str) -> String {
    match oid {
        "1.2.840.113549.1.1.4" => "md5WithRSAEncryption",
        "1.2.840.113549.1.1.5" => "sha1WithRSAEncryption",
        "1.2.840.113549.1.1.10" => "rsassaPss",
        "1.2.840.113549.1.1.11" => "sha256WithRSAEncryption",
        "1.2.840.113549.1.1.12" => "sha384WithRSAEncryption",
        "1.2.840.113549.1.1.13" => "sha512WithRSAEncryption",
        "1.2.840.10045.4.1" => "ecdsa-with-SHA1",
        "1.2.840.10045.4.3.2" => "ecdsa-with-SHA256",
        "1.2.840.10045.4.3.3" => "ecdsa-with-SHA384",
        "1.2.840.10045.4.3.4" => "ecdsa-with-SHA512",
        "1.2.840.10040.4.3" => "dsa-with-SHA1",
        "1.3.101.112" => "Ed25519",
        "1.3.101.113" => "Ed448",
        other => other,
    }
    .to_string()
}

/// The Key Usage bits libvirt requires of `role` that the certificate's Key Usage extension
/// lacks (empty when it has no such extension, which libvirt accepts).
///
/// libvirt's `virNetTLSCertCheckKeyUsage` runs on its own certificate at start and on the
/// peer's in every session: a server or client certificate needs digitalSignature and
/// keyEncipherment (even for ECDSA keys, which never encipher), a CA certificate keyCertSign.
/// For a leaf, a missing bit refuses the certificate when the extension is critical and only
/// logs a warning otherwise; an issuer without keyCertSign fails every chain it is part of.
pub fn libvirt_key_usage_missing(cert: &CertInfo, role: Role) -> Vec<&'static str> {
    let has_extension = !cert.key_usage.is_empty() || cert.key_usage_critical;
    if !has_extension {
        return Vec::new();
    }
    let required: &[&'static str] = match role {
        Role::Authority => &["keyCertSign"],
        Role::Server | Role::Client | Role::Any => &["digitalSignature", "keyEncipherment"],
    };
    required
        .iter()
        .copied()
        .filter(|bit| !cert.key_usage.iter().any(|k| k == bit))
        .collect()
}

/// Findings that depend only on the certificate, its role and the clock. Leaf rules (CN-only,
/// self-signed, EKU, libvirt's key usage) apply at position 0; chain certificates get the
/// expiry and strength rules. Never `untrusted_chain`, `changed` or `name_not_covered` (see
/// [`name_finding`]).
pub fn certificate_findings(
    cert: &CertInfo,
    now: i64,
    windows: Windows,
    role: Role,
) -> Vec<Finding> {
    let what = describe(cert, role);
    let mut out: Vec<(FindingKind, String)> = Vec::new();
    out.extend(validity_finding(cert, now, windows, &what));
    out.extend(strength_findings(cert, role, &what));
    if cert.position == 0 {
        out.extend(leaf_findings(cert, role, &what));
    }
    out.into_iter()
        .map(|(kind, detail)| Finding {
            kind,
            certificate: Some(cert.sha256.clone()),
            detail,
        })
        .collect()
}

fn describe(cert: &CertInfo, role: Role) -> String {
    if cert.position > 0 {
        return format!("chain certificate {} ({})", cert.position, cert.subject_cn);
    }
    match role {
        Role::Server => "the server certificate",
        Role::Client => "the client certificate",
        Role::Any => "the certificate",
        Role::Authority => "the CA certificate",
    }
    .to_string()
}

/// Expired, expiring (exclusive windows, most urgent first) and not yet valid.
fn validity_finding(
    cert: &CertInfo,
    now: i64,
    windows: Windows,
    what: &str,
) -> Vec<(FindingKind, String)> {
    let mut out = Vec::new();
    let left = cert.not_after - now;
    if left <= 0 {
        out.push((
            FindingKind::Expired,
            format!("{what} expired {} ago", days(-left)),
        ));
    } else if left < seconds(windows.critical) {
        out.push((
            FindingKind::ExpiringCritical,
            format!("{what} expires in {}", days(left)),
        ));
    } else if left < seconds(windows.warning) {
        out.push((
            FindingKind::ExpiringSoon,
            format!("{what} expires in {}", days(left)),
        ));
    }
    if cert.not_before > now {
        out.push((
            FindingKind::NotYetValid,
            format!(
                "{what} is valid only from {} on",
                days(cert.not_before - now)
            ),
        ));
    }
    out
}

fn seconds(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Weak keys and signatures, which rustls and current GnuTLS refuse.
fn strength_findings(cert: &CertInfo, role: Role, what: &str) -> Vec<(FindingKind, String)> {
    let mut out = Vec::new();
    let weak_key = match cert.key_type.as_str() {
        "RSA" => cert.key_bits < 2048,
        "DSA" => true,
        t if t.starts_with("EC ") => cert.key_bits < 256,
        _ => false,
    };
    if weak_key {
        out.push((
            FindingKind::WeakKey,
            format!(
                "{what} has a {} key of {} bits",
                cert.key_type, cert.key_bits
            ),
        ));
    }
    // A trust anchor's own signature is never checked by clients; only flag signatures that are.
    let anchor = cert.self_signed && (cert.position > 0 || role == Role::Authority);
    let sig = cert.signature_algorithm.to_ascii_lowercase();
    if !anchor && (sig.contains("sha1") || sig.contains("md5")) {
        out.push((
            FindingKind::WeakSignature,
            format!("{what} is signed with {}", cert.signature_algorithm),
        ));
    }
    out
}

/// The rules for the certificate a peer presents first (or the one a trust file holds).
fn leaf_findings(cert: &CertInfo, role: Role, what: &str) -> Vec<(FindingKind, String)> {
    let mut out = Vec::new();
    if role == Role::Server && cert.dns_names.is_empty() && cert.ip_addresses.is_empty() {
        out.push((
            FindingKind::CnOnly,
            format!(
                "no subjectAltName DNS name or address (CN={}): clients check SANs; reissue \
                 with every name and address clients use",
                cert.subject_cn
            ),
        ));
    }
    if cert.self_signed && role != Role::Authority {
        out.push((FindingKind::SelfSigned, format!("{what} is self-signed")));
    }
    let eku = |wanted: &str| {
        cert.extended_key_usage.is_empty()
            || cert
                .extended_key_usage
                .iter()
                .any(|e| e == wanted || e == "any")
    };
    match role {
        Role::Server if !eku("serverAuth") => out.push((
            FindingKind::NotServerAuth,
            format!(
                "extended key usage {:?} lacks serverAuth",
                cert.extended_key_usage
            ),
        )),
        Role::Client if !eku("clientAuth") => out.push((
            FindingKind::NotClientAuth,
            format!(
                "extended key usage {:?} lacks clientAuth",
                cert.extended_key_usage
            ),
        )),
        _ => {}
    }
    let missing = libvirt_key_usage_missing(cert, role).join(" and ");
    if missing.is_empty() {
        return out;
    }
    if role == Role::Authority {
        // Chain verification (GnuTLS and rustls alike) refuses such an issuer, critical or not.
        out.push((
            FindingKind::LibvirtKeyUsage,
            format!(
                "key usage {:?} lacks {missing}, so nothing {what} signs verifies",
                cert.key_usage
            ),
        ));
    } else if cert.key_usage_critical {
        out.push((
            FindingKind::LibvirtKeyUsage,
            format!(
                "critical key usage {:?} lacks {missing}, so libvirt refuses {what} in every \
                 session",
                cert.key_usage
            ),
        ));
    }
    out
}

fn days(seconds: i64) -> String {
    let d = seconds as f64 / 86400.0;
    if d >= 2.0 {
        format!("{d:.0} days")
    } else {
        format!("{:.1} hours", seconds as f64 / 3600.0)
    }
}

/// `name_not_covered` when any name or address used to reach the host is missing from the SANs.
pub fn name_finding(leaf: &CertInfo, names_used: &[String]) -> Option<Finding> {
    let missing: Vec<&str> = names_used
        .iter()
        .filter(|n| !name_is_covered(leaf, n))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return None;
    }
    let mut sans: Vec<String> = leaf.dns_names.clone();
    sans.extend(leaf.ip_addresses.iter().map(|ip| ip.to_string()));
    Some(Finding {
        kind: FindingKind::NameNotCovered,
        certificate: Some(leaf.sha256.clone()),
        detail: format!(
            "used to reach the host but not in the subjectAltName: {}; SANs are [{}]",
            missing.join(", "),
            sans.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests;
