//! PEM text as `check` and the CA read it (through the shared reader in `identity`), and
//! describing certificates for people.

use std::net::IpAddr;

use rustls::pki_types::pem::SectionKind;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::identity::{encrypted_key_present, pem_sections};

/// One PEM block: its label (`CERTIFICATE`, `PRIVATE KEY`, ...) and the DER it holds.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub label: &'static str,
    pub der: Vec<u8>,
}

fn label(kind: SectionKind) -> &'static str {
    match kind {
        SectionKind::Certificate => "CERTIFICATE",
        SectionKind::PrivateKey => "PRIVATE KEY",
        SectionKind::RsaPrivateKey => "RSA PRIVATE KEY",
        SectionKind::EcPrivateKey => "EC PRIVATE KEY",
        SectionKind::PublicKey => "PUBLIC KEY",
        SectionKind::Crl => "X509 CRL",
        SectionKind::Csr => "CERTIFICATE REQUEST",
        _ => "OTHER",
    }
}

/// Every certificate, key and CRL block in `text`; an error describes the first malformed one.
/// Encrypted keys are not among them: see [`has_encrypted_key`].
pub(crate) fn blocks(text: &str) -> Result<Vec<Block>, String> {
    pem_sections(text.as_bytes())
        .map(|sections| {
            sections
                .into_iter()
                .map(|(kind, der)| Block {
                    label: label(kind),
                    der,
                })
                .collect()
        })
        .map_err(|e| e.to_string())
}

/// Whether `text` holds an encrypted private key (PKCS#8 or legacy PEM encryption).
pub(crate) fn has_encrypted_key(text: &str) -> bool {
    encrypted_key_present(text.as_bytes())
}

/// The DER of every `CERTIFICATE` block in `text`.
pub(crate) fn certificate_ders(text: &str) -> Result<Vec<Vec<u8>>, String> {
    Ok(blocks(text)?
        .into_iter()
        .filter(|b| b.label == "CERTIFICATE")
        .map(|b| b.der)
        .collect())
}

pub(crate) fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing bytes after the certificate".into()),
        Err(e) => Err(format!("not a valid X.509 certificate ({e})")),
    }
}

/// Whether the certificate may issue others (basicConstraints CA:TRUE).
pub(crate) fn is_ca(cert: &X509Certificate<'_>) -> bool {
    cert.basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca)
}

/// `DNS:a, DNS:b, IP:10.0.0.1` (or `none`).
pub(crate) fn describe_sans(dns: &[String], ips: &[IpAddr]) -> String {
    let all: Vec<String> = dns
        .iter()
        .map(|d| format!("DNS:{d}"))
        .chain(ips.iter().map(|i| format!("IP:{i}")))
        .collect();
    if all.is_empty() {
        "none".into()
    } else {
        all.join(", ")
    }
}

/// `2035-11-20 11:47 UTC`.
pub fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

/// A [`crate::CertInfo`] time (Unix seconds) as [`format_time`] writes it.
pub(crate) fn format_unix(seconds: i64) -> String {
    OffsetDateTime::from_unix_timestamp(seconds)
        .map(format_time)
        .unwrap_or_else(|_| format!("{seconds} (Unix time)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_keep_their_labels_and_a_damaged_one_is_named() {
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let found = blocks(&key).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].label, "PRIVATE KEY");

        let damaged = format!("{key}-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n");
        let err = blocks(&damaged).unwrap_err();
        assert!(err.starts_with("malformed PEM block 2"), "{err}");
    }

    #[test]
    fn times_are_written_in_utc_to_the_minute() {
        assert_eq!(format_unix(0), "1970-01-01 00:00 UTC");
    }
}
