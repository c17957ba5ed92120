//! What a certificate says, and what is wrong with it (the findings vocabulary).

use std::net::IpAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};
pub use virtgate_api::{CertInfo, Finding, FindingKind};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

#[derive(Debug, thiserror::Error)]
#[error("certificate at chain position {position} cannot be parsed: {reason}")]
pub struct CertError {
    pub position: usize,
    pub reason: String,
}

/// Expiry thresholds.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    pub warning: Duration,
    pub critical: Duration,
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub fn parse_certificate(der: &[u8], position: usize) -> Result<CertInfo, CertError> {
    let err = |reason: String| CertError { position, reason };
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| err(e.to_string()))?;
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    let mut has_san = false;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        has_san = true;
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_from_bytes(bytes) {
                        ip_addresses.push(ip);
                    }
                }
                _ => {}
            }
        }
    }
    let (key_type, key_bits) = key_description(&cert);
    let (key_usage, key_usage_critical) = match cert.key_usage() {
        Ok(Some(ku)) => (key_usage_names(ku.value), ku.critical),
        _ => (Vec::new(), false),
    };
    let extended_key_usage = match cert.extended_key_usage() {
        Ok(Some(eku)) => {
            let mut names = Vec::new();
            if eku.value.any {
                names.push("any".to_string());
            }
            if eku.value.server_auth {
                names.push("serverAuth".to_string());
            }
            if eku.value.client_auth {
                names.push("clientAuth".to_string());
            }
            for other in &eku.value.other {
                names.push(other.to_id_string());
            }
            names
        }
        _ => Vec::new(),
    };
    let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    Ok(CertInfo {
        sha256: sha256_hex(der),
        position,
        subject: cert.subject().to_string(),
        subject_cn: first_cn(cert.subject()),
        issuer: cert.issuer().to_string(),
        issuer_cn: first_cn(cert.issuer()),
        serial: hex::encode(cert.raw_serial()),
        dns_names,
        ip_addresses,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        key_type,
        key_bits,
        signature_algorithm: signature_name(&cert.signature_algorithm.algorithm.to_id_string()),
        spki_sha256: sha256_hex(cert.public_key().raw),
        key_usage,
        key_usage_critical,
        extended_key_usage,
        is_ca,
        self_signed: cert.subject().as_raw() == cert.issuer().as_raw(),
        has_san,
    })
}

fn first_cn(name: &x509_parser::x509::X509Name) -> String {
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

fn key_description(cert: &X509Certificate) -> (String, u32) {
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

/// Findings that depend only on the certificate and the clock.
pub fn certificate_findings(cert: &CertInfo, now: i64, windows: Windows) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |kind, detail: String| {
        out.push(Finding {
            kind,
            certificate: Some(cert.sha256.clone()),
            detail,
        })
    };
    let what = if cert.position == 0 {
        "the host certificate".to_string()
    } else {
        format!("chain certificate {} ({})", cert.position, cert.subject_cn)
    };
    let left = cert.not_after - now;
    if left <= 0 {
        add(
            FindingKind::Expired,
            format!("{what} expired {} ago", days(-left)),
        );
    } else if left < windows.critical.as_secs() as i64 {
        add(
            FindingKind::ExpiringCritical,
            format!("{what} expires in {}", days(left)),
        );
    } else if left < windows.warning.as_secs() as i64 {
        add(
            FindingKind::ExpiringSoon,
            format!("{what} expires in {}", days(left)),
        );
    }
    if cert.not_before > now {
        add(
            FindingKind::NotYetValid,
            format!(
                "{what} is valid only from {} on",
                days(cert.not_before - now)
            ),
        );
    }
    let weak_key = match cert.key_type.as_str() {
        "RSA" => cert.key_bits < 2048,
        "DSA" => true,
        t if t.starts_with("EC ") => cert.key_bits < 256,
        _ => false,
    };
    if weak_key {
        add(
            FindingKind::WeakKey,
            format!(
                "{what} has a {} key of {} bits",
                cert.key_type, cert.key_bits
            ),
        );
    }
    // A self-signed root's own signature is never checked by clients; only flag signatures that are.
    let sig = cert.signature_algorithm.to_ascii_lowercase();
    if !(cert.self_signed && cert.position > 0) && (sig.contains("sha1") || sig.contains("md5")) {
        add(
            FindingKind::WeakSignature,
            format!("{what} is signed with {}", cert.signature_algorithm),
        );
    }
    if cert.position == 0 {
        if !cert.has_san {
            add(
                FindingKind::CnOnly,
                format!(
                    "no subjectAltName (CN={}): clients check SANs; reissue with every name and address clients use",
                    cert.subject_cn
                ),
            );
        }
        if cert.self_signed {
            add(FindingKind::SelfSigned, format!("{what} is self-signed"));
        }
        let eku_ok = cert.extended_key_usage.is_empty()
            || cert
                .extended_key_usage
                .iter()
                .any(|e| e == "serverAuth" || e == "any");
        // libvirt refuses a critical Key Usage without both of these (virNetTLSContextCheckCertKeyUsage).
        let ku_ok = !cert.key_usage_critical
            || (cert.key_usage.iter().any(|k| k == "digitalSignature")
                && cert.key_usage.iter().any(|k| k == "keyEncipherment"));
        if !eku_ok {
            add(
                FindingKind::NotServerAuth,
                format!(
                    "extended key usage {:?} lacks serverAuth",
                    cert.extended_key_usage
                ),
            );
        } else if !ku_ok {
            add(
                FindingKind::NotServerAuth,
                format!(
                    "critical key usage {:?} lacks digitalSignature and keyEncipherment, which libvirt clients require",
                    cert.key_usage
                ),
            );
        }
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

/// Whether the certificate's SANs cover a name (DNS, with one-label wildcards) or an address.
/// The subject CN is deliberately ignored, as TLS clients do when SANs exist.
pub fn covers(cert: &CertInfo, name: &str) -> bool {
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return cert.ip_addresses.contains(&ip);
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    cert.dns_names.iter().any(|pattern| {
        let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            Some(suffix) => name
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
            None => pattern == name,
        }
    })
}

/// `name_not_covered` when any name or address used to reach the host is missing from the SANs.
pub fn name_finding(leaf: &CertInfo, names_used: &[String]) -> Option<Finding> {
    let missing: Vec<&str> = names_used
        .iter()
        .filter(|n| !covers(leaf, n))
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
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType};

    const DAY: i64 = 86400;
    const WINDOWS: Windows = Windows {
        warning: Duration::from_secs(30 * 86400),
        critical: Duration::from_secs(7 * 86400),
    };

    fn cert(
        cn: &str,
        sans: Vec<SanType>,
        valid_days: (i64, i64),
        eku: Vec<ExtendedKeyUsagePurpose>,
    ) -> (CertInfo, i64) {
        let now = time::OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        params.not_before = now + time::Duration::days(valid_days.0);
        params.not_after = now + time::Duration::days(valid_days.1);
        params.extended_key_usages = eku;
        let key = KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        (parse_certificate(&der, 0).unwrap(), now.unix_timestamp())
    }

    fn kinds(findings: &[Finding]) -> Vec<FindingKind> {
        findings.iter().map(|f| f.kind).collect()
    }

    fn dns(n: &str) -> SanType {
        SanType::DnsName(n.try_into().unwrap())
    }

    #[test]
    fn parses_subject_sans_validity_key_and_pin() {
        let (c, now) = cert(
            "h1",
            vec![dns("h1"), SanType::IpAddress("10.0.0.1".parse().unwrap())],
            (-1, 90),
            vec![],
        );
        assert_eq!(c.subject_cn, "h1");
        assert_eq!(c.dns_names, vec!["h1"]);
        assert_eq!(c.ip_addresses, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert!((c.not_after - (now + 90 * DAY)).abs() < 5);
        assert_eq!(c.key_type, "EC P-256");
        assert_eq!(c.key_bits, 256);
        assert_eq!(c.signature_algorithm, "ecdsa-with-SHA256");
        assert_eq!(c.spki_sha256.len(), 64);
        assert!(c.self_signed);
    }

    #[test]
    fn expiry_windows_are_exclusive_and_ordered() {
        for (left_days, expected) in [
            (-1, Some(FindingKind::Expired)),
            (3, Some(FindingKind::ExpiringCritical)),
            (10, Some(FindingKind::ExpiringSoon)),
            (60, None),
        ] {
            let (c, now) = cert("h", vec![dns("h")], (-100, left_days), vec![]);
            let found: Vec<_> = kinds(&certificate_findings(&c, now, WINDOWS))
                .into_iter()
                .filter(|k| {
                    matches!(
                        k,
                        FindingKind::Expired
                            | FindingKind::ExpiringCritical
                            | FindingKind::ExpiringSoon
                    )
                })
                .collect();
            assert_eq!(
                found,
                expected.into_iter().collect::<Vec<_>>(),
                "{left_days} days left"
            );
        }
    }

    #[test]
    fn cn_only_not_yet_valid_and_not_server_auth_are_found() {
        let (c, now) = cert(
            "h",
            vec![],
            (5, 90),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        );
        let k = kinds(&certificate_findings(&c, now, WINDOWS));
        for expected in [
            FindingKind::CnOnly,
            FindingKind::NotYetValid,
            FindingKind::NotServerAuth,
            FindingKind::SelfSigned,
        ] {
            assert!(k.contains(&expected), "{expected:?} missing from {k:?}");
        }
    }

    #[test]
    fn names_and_addresses_are_matched_against_sans_only() {
        let (c, _) = cert(
            "h1.example.com",
            vec![
                dns("h1"),
                dns("*.lab.example"),
                SanType::IpAddress("::1".parse().unwrap()),
            ],
            (-1, 90),
            vec![],
        );
        assert!(covers(&c, "h1"));
        assert!(covers(&c, "H1."));
        assert!(covers(&c, "x.lab.example"));
        assert!(!covers(&c, "a.b.lab.example"), "wildcards cover one label");
        assert!(covers(&c, "::1"));
        assert!(covers(&c, "[::1]"));
        assert!(!covers(&c, "h1.example.com"), "the CN does not count");
        let f = name_finding(&c, &["h1".into(), "127.0.0.1".into()]).unwrap();
        assert_eq!(f.kind, FindingKind::NameNotCovered);
        assert!(
            f.detail.contains("not in the subjectAltName: 127.0.0.1;"),
            "only the address is missing: {}",
            f.detail
        );
        assert!(name_finding(&c, &["h1".into(), "::1".into()]).is_none());
    }
}
