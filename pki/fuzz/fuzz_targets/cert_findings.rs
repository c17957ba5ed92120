//! Arbitrary bytes as a DER certificate, judged the way the broker and `virtgate pki check`
//! judge what hosts present: `parse_certificate` → `certificate_findings` for every role, as a
//! leaf and as a chain certificate, at several clocks → `name_finding`. Nothing may panic, and
//! the judge keeps to what it documents:
//! - findings name the certificate they are about, and never `untrusted_chain`, `changed` or
//!   `name_not_covered` (those come from elsewhere);
//! - leaf rules (CN-only, self-signed, EKU, libvirt's key usage) only at position 0, EKU and
//!   CN-only only for the roles they concern; at most one of expired / expiring;
//! - `subject_dn` and `spki_pin` of the same bytes agree with the parsed `CertInfo`, which
//!   survives JSON (it is part of the broker's API);
//! - a certificate covers its own IP SANs and plain DNS SANs.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use virtgate_pki::rustls::pki_types::CertificateDer;
use virtgate_pki::{
    certificate_findings, libvirt_key_usage_missing, name_finding, parse_certificate, spki_pin,
    subject_dn, CertInfo, FindingKind, Role, Windows,
};

const ROLES: [Role; 4] = [Role::Server, Role::Client, Role::Any, Role::Authority];

const WINDOWS: Windows = Windows {
    warning: Duration::from_secs(30 * 86400),
    critical: Duration::from_secs(7 * 86400),
};

fuzz_target!(|data: &[u8]| {
    let Ok(leaf) = parse_certificate(data, 0) else {
        return;
    };
    let der = CertificateDer::from(data);
    assert_eq!(subject_dn(&der).as_deref(), Ok(leaf.subject.as_str()));
    assert_eq!(spki_pin(&der).as_ref(), Ok(&leaf.spki_sha256));
    let json = serde_json::to_string(&leaf).expect("CertInfo serializes");
    let back: CertInfo = serde_json::from_str(&json).expect("CertInfo deserializes");
    assert_eq!(back, leaf);

    let chain = CertInfo {
        position: 1,
        ..leaf.clone()
    };
    // The clock around every edge the validity rules have, and a realistic one.
    let mut clocks = vec![1_750_000_000];
    for edge in [leaf.not_before, leaf.not_after] {
        clocks.extend([edge - 1, edge, edge + 1]);
    }
    for edge in [WINDOWS.warning, WINDOWS.critical] {
        clocks.push(leaf.not_after - edge.as_secs() as i64);
    }
    for cert in [&leaf, &chain] {
        for role in ROLES {
            let _ = libvirt_key_usage_missing(cert, role);
            for &now in &clocks {
                judge(cert, now, role);
            }
        }
    }

    // Every name the certificate lists for itself is covered (dNSNames that read as an IP
    // address, or carry spaces or brackets, are not names a client would match with).
    let mut own: Vec<String> = leaf
        .dns_names
        .iter()
        .filter(|n| {
            n.trim_end_matches('.').parse::<std::net::IpAddr>().is_err()
                && !n.contains(|c: char| c.is_whitespace() || c == '[' || c == ']')
        })
        .cloned()
        .collect();
    own.extend(leaf.ip_addresses.iter().map(|ip| ip.to_string()));
    assert_eq!(name_finding(&leaf, &own), None, "own names {own:?}");
    let mut used = own;
    used.extend(
        [
            "h1.example.com",
            "192.0.2.7",
            "[2001:db8::1]",
            "",
            "*.",
            ".",
        ]
        .map(String::from),
    );
    used.push(leaf.subject_cn.clone());
    if let Some(f) = name_finding(&leaf, &used) {
        assert_eq!(f.kind, FindingKind::NameNotCovered);
        assert_eq!(f.certificate.as_deref(), Some(leaf.sha256.as_str()));
    }
});

fn judge(cert: &CertInfo, now: i64, role: Role) {
    let findings = certificate_findings(cert, now, WINDOWS, role);
    let kinds: Vec<FindingKind> = findings.iter().map(|f| f.kind).collect();
    for f in &findings {
        assert_eq!(f.certificate.as_deref(), Some(cert.sha256.as_str()));
        assert!(!f.detail.is_empty());
    }
    for kind in [
        FindingKind::UntrustedChain,
        FindingKind::Changed,
        FindingKind::NameNotCovered,
    ] {
        assert!(!kinds.contains(&kind), "{kind:?} from certificate_findings");
    }
    let leaf_only = [
        FindingKind::CnOnly,
        FindingKind::SelfSigned,
        FindingKind::NotServerAuth,
        FindingKind::NotClientAuth,
        FindingKind::LibvirtKeyUsage,
    ];
    if cert.position > 0 {
        assert!(
            !kinds.iter().any(|k| leaf_only.contains(k)),
            "leaf rule on a chain certificate: {kinds:?}"
        );
    }
    if role != Role::Server {
        assert!(!kinds.contains(&FindingKind::CnOnly));
        assert!(!kinds.contains(&FindingKind::NotServerAuth));
    }
    if role != Role::Client {
        assert!(!kinds.contains(&FindingKind::NotClientAuth));
    }
    if role == Role::Authority {
        assert!(!kinds.contains(&FindingKind::SelfSigned));
    }
    let expiry = [
        FindingKind::Expired,
        FindingKind::ExpiringCritical,
        FindingKind::ExpiringSoon,
    ];
    assert!(kinds.iter().filter(|k| expiry.contains(k)).count() <= 1);
    assert_eq!(
        kinds.contains(&FindingKind::Expired),
        cert.not_after <= now,
        "expired at {now}, not after {}",
        cert.not_after
    );
    assert_eq!(
        kinds.contains(&FindingKind::NotYetValid),
        cert.not_before > now
    );
    // Each rule speaks once.
    let mut unique = kinds.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), kinds.len(), "{kinds:?}");
}
