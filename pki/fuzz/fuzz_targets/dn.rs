//! The DN string grammar, both ways, on the same input:
//! 1. as text (`--dn`): whatever `parse_dn` accepts is issued (a self-signed certificate, one
//!    key for the whole run) and the issued subject, written by `subject_dn`, parses back to the
//!    same DN; that spelling is canonical (it issues to itself again). `common_name_part` of
//!    any text does not panic.
//! 2. as the DER of an X.509 Name (what peers present): `dn_string` writes it, and `read_dn`
//!    reads back exactly its RDNs, attribute types and values, as computed independently below.
//!    So two different names can never share a string: a policy glob sees one spelling per
//!    subject.
//! Nothing may panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use virtgate_pki::fuzzing::{read_dn, Attribute, AttributeValue};
use virtgate_pki::rcgen::{CertificateParams, KeyPair};
use virtgate_pki::x509_parser::asn1_rs::{Any, Class, Tag, ToDer};
use virtgate_pki::x509_parser::prelude::FromDer;
use virtgate_pki::x509_parser::x509::X509Name;
use virtgate_pki::{common_name_part, dn_string, parse_dn, subject_dn};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        text_round_trip(text);
    }
    name_round_trip(data);
});

fn key() -> &'static KeyPair {
    static KEY: OnceLock<KeyPair> = OnceLock::new();
    KEY.get_or_init(|| KeyPair::generate().expect("a key"))
}

/// The subject DN string of a certificate issued for `text`, if `parse_dn` accepts it.
fn issued(text: &str) -> Option<String> {
    let dn = parse_dn(text).ok()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    let cert = params
        .self_signed(key())
        .unwrap_or_else(|e| panic!("parse_dn accepted {text:?}, which cannot be issued: {e}"));
    Some(subject_dn(cert.der()).expect("an issued certificate parses"))
}

fn text_round_trip(text: &str) {
    let _ = common_name_part(text);
    let Ok(dn) = parse_dn(text) else {
        return;
    };
    let written = issued(text).expect("parsed once, parses again");
    assert_eq!(
        parse_dn(&written).ok(),
        Some(dn),
        "{text:?} issued as {written:?}"
    );
    assert_eq!(issued(&written).as_deref(), Some(written.as_str()));
    assert!(common_name_part(&written).starts_with("CN="), "{written:?}");
}

fn name_round_trip(der: &[u8]) {
    let Ok((_, name)) = X509Name::from_der(der) else {
        return;
    };
    let text = dn_string(&name);
    let rdns: Vec<Vec<Attribute>> = name
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|a| Attribute {
                    key: key_of(&a.attr_type().to_id_string()),
                    value: value_of(a.attr_value()),
                })
                .collect()
        })
        .collect();
    if rdns.is_empty() {
        // The empty name; any other has an attribute, so a '='.
        assert_eq!(text, "");
        return;
    }
    assert_eq!(read_dn(&text).as_ref(), Ok(&rdns), "{text:?}");
}

/// Short names as docs/pki.md lists them; any other type as its dotted OID.
fn key_of(oid: &str) -> String {
    match oid {
        "2.5.4.6" => "C",
        "2.5.4.8" => "ST",
        "2.5.4.7" => "L",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.3" => "CN",
        "2.5.4.5" => "serialNumber",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        "1.2.840.113549.1.9.1" => "EMAIL",
        other => other,
    }
    .to_string()
}

/// A universal, primitive character string that decodes is text (UTF-8 for the 8-bit kinds,
/// UTF-16BE for BMPString, UTF-32BE for UniversalString; TeletexString never); anything else is
/// its DER.
fn value_of(value: &Any<'_>) -> AttributeValue {
    let data = value.data;
    let text = if value.header.class() != Class::Universal || value.header.is_constructed() {
        None
    } else {
        match value.tag() {
            Tag::Utf8String
            | Tag::PrintableString
            | Tag::Ia5String
            | Tag::NumericString
            | Tag::VisibleString => String::from_utf8(data.to_vec()).ok(),
            Tag::BmpString if data.len() % 2 == 0 => String::from_utf16(
                &data
                    .chunks(2)
                    .map(|u| u16::from_be_bytes([u[0], u[1]]))
                    .collect::<Vec<_>>(),
            )
            .ok(),
            Tag::UniversalString if data.len() % 4 == 0 => data
                .chunks(4)
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
            _ => None,
        }
    };
    match text {
        Some(text) => AttributeValue::Text(text),
        None => AttributeValue::Der(value.to_der_vec().expect("a parsed value re-encodes")),
    }
}
