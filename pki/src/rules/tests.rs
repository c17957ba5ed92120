use super::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

const DAY: i64 = 86400;
const WINDOWS: Windows = Windows {
    warning: Duration::from_secs(30 * 86400),
    critical: Duration::from_secs(7 * 86400),
};

fn params(cn: &str, sans: Vec<SanType>, valid_days: (i64, i64)) -> CertificateParams {
    let now = time::OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans;
    params.not_before = now + time::Duration::days(valid_days.0);
    params.not_after = now + time::Duration::days(valid_days.1);
    params
}

fn parsed(params: CertificateParams) -> (CertInfo, i64) {
    let key = KeyPair::generate().unwrap();
    let der = params.self_signed(&key).unwrap().der().to_vec();
    (
        parse_certificate(&der, 0).unwrap(),
        time::OffsetDateTime::now_utc().unix_timestamp(),
    )
}

fn cert(
    cn: &str,
    sans: Vec<SanType>,
    valid_days: (i64, i64),
    eku: Vec<ExtendedKeyUsagePurpose>,
) -> (CertInfo, i64) {
    let mut params = params(cn, sans, valid_days);
    params.extended_key_usages = eku;
    parsed(params)
}

/// A server certificate with a good SAN, valid for 90 days, with the given key usages.
fn with_key_usage(usages: Vec<KeyUsagePurpose>) -> (CertInfo, i64) {
    let mut params = params("h", vec![dns("h")], (-1, 90));
    params.key_usages = usages;
    parsed(params)
}

fn kinds(findings: &[Finding]) -> Vec<FindingKind> {
    findings.iter().map(|f| f.kind).collect()
}

fn dns(n: &str) -> SanType {
    SanType::DnsName(n.try_into().unwrap())
}

fn judged(cert: &CertInfo, now: i64, role: Role) -> Vec<FindingKind> {
    kinds(&certificate_findings(cert, now, WINDOWS, role))
}

// --- parsing ----------------------------------------------------------------------------------

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
    assert_eq!(c.spki_sha256.to_string().len(), 64);
    assert!(c.self_signed);
}

#[test]
fn subject_and_issuer_are_the_dn_strings_policies_match() {
    let mut p = params("h1", vec![dns("h1")], (-1, 90));
    p.distinguished_name = crate::parse_dn(r"C=GB,O=Example\, Inc.,CN=h1").unwrap();
    let key = KeyPair::generate().unwrap();
    let der = p.self_signed(&key).unwrap().der().clone();

    let c = parse_certificate(&der, 0).unwrap();

    assert_eq!(c.subject, r"C=GB,O=Example\, Inc.,CN=h1");
    assert_eq!(c.issuer, c.subject);
    assert_eq!(c.subject, crate::subject_dn(&der).unwrap());
    assert_eq!(c.spki_sha256, crate::spki_pin(&der).unwrap());
    assert_eq!(c.sha256, sha256_hex(&der));
}

#[test]
fn key_usage_and_its_criticality_are_read() {
    let (c, _) = with_key_usage(vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ]);
    assert_eq!(c.key_usage, ["digitalSignature", "keyEncipherment"]);
    assert!(c.key_usage_critical, "rcgen marks Key Usage critical");
}

#[test]
fn bytes_that_are_not_a_certificate_name_their_chain_position() {
    let err = parse_certificate(b"junk", 2).unwrap_err();
    assert_eq!(err.position, 2);
    assert!(err.to_string().contains("position 2"), "{err}");
}

// --- the JSON shape of the broker's API ------------------------------------------------------

#[test]
fn cert_info_keeps_its_json_field_names_and_the_pin_is_a_hex_string() {
    let (c, _) = cert("h1", vec![dns("h1")], (-1, 90), vec![]);
    let json = serde_json::to_value(&c).unwrap();
    let mut fields: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "dns_names",
            "extended_key_usage",
            "has_san",
            "ip_addresses",
            "is_ca",
            "issuer",
            "issuer_cn",
            "key_bits",
            "key_type",
            "key_usage",
            "key_usage_critical",
            "not_after",
            "not_before",
            "position",
            "self_signed",
            "serial",
            "sha256",
            "signature_algorithm",
            "spki_sha256",
            "subject",
            "subject_cn",
        ]
    );
    assert_eq!(json["spki_sha256"], c.spki_sha256.to_string());
    assert_eq!(serde_json::from_value::<CertInfo>(json).unwrap(), c);
}

#[test]
fn finding_kinds_are_snake_case_in_json_and_as_str() {
    for kind in FindingKind::ALL {
        assert_eq!(
            serde_json::to_value(kind).unwrap(),
            serde_json::Value::String(kind.as_str().into())
        );
    }
    let finding = Finding {
        kind: FindingKind::LibvirtKeyUsage,
        certificate: None,
        detail: "d".into(),
    };
    assert_eq!(
        serde_json::to_string(&finding).unwrap(),
        r#"{"kind":"libvirt_key_usage","detail":"d"}"#
    );
}

#[test]
fn only_expiry_warnings_and_self_signed_leaves_still_work_today() {
    let warnings: Vec<FindingKind> = FindingKind::ALL
        .into_iter()
        .filter(|k| k.severity() == Severity::Warning)
        .collect();
    assert_eq!(
        warnings,
        [
            FindingKind::ExpiringSoon,
            FindingKind::ExpiringCritical,
            FindingKind::SelfSigned
        ]
    );
}

// --- the judge --------------------------------------------------------------------------------

#[test]
fn expiry_windows_are_exclusive_and_ordered() {
    for (left_days, expected) in [
        (-1, Some(FindingKind::Expired)),
        (3, Some(FindingKind::ExpiringCritical)),
        (10, Some(FindingKind::ExpiringSoon)),
        (60, None),
    ] {
        let (c, now) = cert("h", vec![dns("h")], (-100, left_days), vec![]);
        let found: Vec<_> = judged(&c, now, Role::Server)
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
    let k = judged(&c, now, Role::Server);
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
fn a_client_certificate_needs_client_auth_and_no_sans() {
    let (server_only, now) = cert(
        "c",
        vec![],
        (-1, 90),
        vec![ExtendedKeyUsagePurpose::ServerAuth],
    );
    assert_eq!(
        judged(&server_only, now, Role::Client),
        [FindingKind::SelfSigned, FindingKind::NotClientAuth]
    );
    let (client, now) = cert(
        "c",
        vec![],
        (-1, 90),
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    );
    assert_eq!(
        judged(&client, now, Role::Client),
        [FindingKind::SelfSigned]
    );
}

#[test]
fn a_leaf_of_unknown_purpose_is_not_judged_by_purpose() {
    let (c, now) = cert(
        "x",
        vec![],
        (-1, 90),
        vec![ExtendedKeyUsagePurpose::CodeSigning],
    );
    assert_eq!(judged(&c, now, Role::Any), [FindingKind::SelfSigned]);
}

#[test]
fn a_critical_key_usage_without_key_encipherment_is_libvirts_key_usage_finding() {
    for role in [Role::Server, Role::Client, Role::Any] {
        let (c, now) = with_key_usage(vec![KeyUsagePurpose::DigitalSignature]);
        let findings = certificate_findings(&c, now, WINDOWS, role);
        let found: Vec<&Finding> = findings
            .iter()
            .filter(|f| f.kind == FindingKind::LibvirtKeyUsage)
            .collect();
        assert_eq!(found.len(), 1, "{role:?}: {findings:?}");
        assert!(
            found[0].detail.contains("lacks keyEncipherment"),
            "{}",
            found[0].detail
        );
        assert!(
            !findings
                .iter()
                .any(|f| f.kind == FindingKind::NotServerAuth),
            "the EKU is fine; the key usage is what libvirt refuses"
        );
    }
}

#[test]
fn libvirt_names_every_key_usage_bit_a_critical_extension_lacks() {
    let (c, now) = with_key_usage(vec![KeyUsagePurpose::KeyAgreement]);
    let findings = certificate_findings(&c, now, WINDOWS, Role::Server);
    let detail = &findings
        .iter()
        .find(|f| f.kind == FindingKind::LibvirtKeyUsage)
        .expect("a libvirt_key_usage finding")
        .detail;
    assert!(
        detail.contains("lacks digitalSignature and keyEncipherment"),
        "{detail}"
    );
}

#[test]
fn libvirt_accepts_both_bits_no_key_usage_or_a_non_critical_one() {
    let (both, now) = with_key_usage(vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ]);
    let (none, _) = with_key_usage(vec![]);
    let (mut lax, _) = with_key_usage(vec![KeyUsagePurpose::DigitalSignature]);
    lax.key_usage_critical = false;
    assert_eq!(
        libvirt_key_usage_missing(&lax, Role::Server),
        ["keyEncipherment"],
        "the bit is still reported missing, for a warning"
    );
    for c in [both, none, lax] {
        let k = judged(&c, now, Role::Server);
        assert!(
            !k.contains(&FindingKind::LibvirtKeyUsage),
            "{:?}: {k:?}",
            c.key_usage
        );
    }
}

#[test]
fn a_ca_certificate_must_allow_certificate_signing_and_may_be_self_signed() {
    let mut p = params("ca", vec![], (-1, 3650));
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::CrlSign];
    let (ca, now) = parsed(p);
    assert_eq!(
        judged(&ca, now, Role::Authority),
        [FindingKind::LibvirtKeyUsage]
    );

    let mut p = params("ca", vec![], (-1, 3650));
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let (ca, now) = parsed(p);
    assert!(judged(&ca, now, Role::Authority).is_empty());
}

#[test]
fn weak_keys_and_weak_signatures_are_found_except_an_anchors_own_signature() {
    let (mut c, now) = cert("h", vec![dns("h")], (-1, 90), vec![]);
    c.self_signed = false;
    c.key_type = "RSA".into();
    c.key_bits = 1024;
    c.signature_algorithm = "sha1WithRSAEncryption".into();
    assert_eq!(
        judged(&c, now, Role::Server),
        [FindingKind::WeakKey, FindingKind::WeakSignature]
    );

    c.self_signed = true;
    assert_eq!(judged(&c, now, Role::Authority), [FindingKind::WeakKey]);
    c.position = 1;
    assert_eq!(judged(&c, now, Role::Server), [FindingKind::WeakKey]);
}

#[test]
fn chain_certificates_get_only_the_expiry_and_strength_rules() {
    let (mut c, now) = cert(
        "ca",
        vec![],
        (-100, 3),
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    );
    c.position = 1;
    let findings = certificate_findings(&c, now, WINDOWS, Role::Server);
    assert_eq!(kinds(&findings), [FindingKind::ExpiringCritical]);
    assert!(findings[0].detail.starts_with("chain certificate 1 (ca)"));
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
    assert!(name_is_covered(&c, "h1"));
    assert!(name_is_covered(&c, "H1."));
    assert!(name_is_covered(&c, "x.lab.example"));
    assert!(
        !name_is_covered(&c, "a.b.lab.example"),
        "wildcards cover one label"
    );
    assert!(name_is_covered(&c, "::1"));
    assert!(name_is_covered(&c, "[::1]"));
    assert!(
        !name_is_covered(&c, "h1.example.com"),
        "the CN does not count"
    );
    let f = name_finding(&c, &["h1".into(), "127.0.0.1".into()]).unwrap();
    assert_eq!(f.kind, FindingKind::NameNotCovered);
    assert!(
        f.detail.contains("not in the subjectAltName: 127.0.0.1;"),
        "only the address is missing: {}",
        f.detail
    );
    assert!(name_finding(&c, &["h1".into(), "::1".into()]).is_none());
}
