//! Reading PEM files and describing certificates for people.

use std::net::IpAddr;

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;

/// One PEM block: its label (`CERTIFICATE`, `PRIVATE KEY`, ...) and the DER it holds.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub label: String,
    pub der: Vec<u8>,
}

/// Every PEM block in `text`; an error describes the first malformed block.
pub(crate) fn blocks(text: &str) -> Result<Vec<Block>, String> {
    Pem::iter_from_buffer(text.as_bytes())
        .map(|b| {
            b.map(|p| Block {
                label: p.label,
                der: p.contents,
            })
            .map_err(|e| format!("malformed PEM block ({e})"))
        })
        .collect()
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

/// The DNS names and IP addresses a certificate's subjectAltName lists.
pub(crate) fn sans(cert: &X509Certificate<'_>) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push((*d).to_string()),
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_from_bytes(bytes) {
                        ips.push(ip);
                    }
                }
                _ => {}
            }
        }
    }
    (dns, ips)
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
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

/// Whether `name` (a DNS name or an IP address, optionally in brackets) is covered by the
/// given SANs, the way TLS clients match host names: DNS names case-insensitively, a leading
/// `*.` matching exactly one label, IP addresses only by IP SANs. The CN is never consulted:
/// RFC 6125 clients, rustls among them, ignore it.
pub fn name_is_covered(dns: &[String], ips: &[IpAddr], name: &str) -> bool {
    let bare = name.trim().trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return ips.contains(&ip);
    }
    let want = bare.trim_end_matches('.').to_ascii_lowercase();
    dns.iter().any(|pattern| {
        let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            Some(suffix) => want
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
            None => pattern == want,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_match_like_a_tls_client_matches_them() {
        let dns = vec![
            "gw.example.com".to_string(),
            "*.lab.example.com".to_string(),
        ];
        let ips: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        for covered in [
            "gw.example.com",
            "GW.Example.com.",
            "h1.lab.example.com",
            "10.0.0.1",
            "::1",
            "[::1]",
        ] {
            assert!(name_is_covered(&dns, &ips, covered), "{covered}");
        }
        for not_covered in [
            "gw",
            "example.com",
            "lab.example.com",
            "a.b.lab.example.com",
            "10.0.0.2",
            "127.0.0.1",
        ] {
            assert!(!name_is_covered(&dns, &ips, not_covered), "{not_covered}");
        }
    }

    #[test]
    fn an_ip_address_is_only_covered_by_an_ip_san() {
        let dns = vec!["10.0.0.1".to_string()];
        assert!(!name_is_covered(&dns, &[], "10.0.0.1"));
    }
}
