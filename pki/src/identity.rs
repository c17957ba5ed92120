//! The certificate vocabulary every virtgate crate shares: the crypto provider, PEM files, SPKI
//! pins, subject DNs as text, which names a certificate covers, and the handshake-signature
//! plumbing of custom verifiers.

mod pem_files;
mod pin;

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::{DigitallySignedStruct, SignatureScheme};
use x509_parser::prelude::{FromDer, X509Certificate};

pub use pem_files::{certificate_pem, read_certs, read_crls, read_key, PemError};
pub(crate) use pem_files::{encrypted_key_present, pem_sections};
pub use pin::{Pin, PinError};

use crate::dn::dn_string;
use crate::rules::CertInfo;

/// The crypto provider (ring) every TLS configuration and verifier in virtgate is built with,
/// so the algorithms a client offers and a verifier accepts are the same everywhere.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// For `ServerCertVerifier::verify_tls12_signature` / `ClientCertVerifier::...`: checks the
/// peer's handshake signature with [`provider`]'s algorithms. A verifier that accepts a
/// certificate by pin must still make the peer prove it holds the key; this is that proof.
pub fn verify_tls12_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(
        message,
        cert,
        dss,
        &provider().signature_verification_algorithms,
    )
}

/// The TLS 1.3 counterpart of [`verify_tls12_signature`].
pub fn verify_tls13_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider().signature_verification_algorithms,
    )
}

/// For `supported_verify_schemes`: the signature schemes [`provider`] can verify.
pub fn supported_verify_schemes() -> Vec<SignatureScheme> {
    provider()
        .signature_verification_algorithms
        .supported_schemes()
}

/// A TLS server accepted by its key alone: the key a pin names, or any key (the caller reads
/// the presented key afterwards and decides). Either way the server must prove it holds the key:
/// its handshake signature is verified. Another key than the pin fails the handshake with
/// `CertificateError::ApplicationVerificationFailure`. For servers with no CA behind them: host
/// agents (enrollment, attack tests) and certificate probes.
#[derive(Debug, Clone, Copy)]
pub struct ServerKeyVerifier {
    pin: Option<Pin>,
}

impl ServerKeyVerifier {
    /// Only the key `pin` names.
    pub fn pinned(pin: Pin) -> Arc<ServerKeyVerifier> {
        Arc::new(ServerKeyVerifier { pin: Some(pin) })
    }

    /// Any key; the handshake still proves the server holds it.
    pub fn any_key() -> Arc<ServerKeyVerifier> {
        Arc::new(ServerKeyVerifier { pin: None })
    }

    /// [`Self::pinned`] with a pin, [`Self::any_key`] without.
    pub fn new(pin: Option<Pin>) -> Arc<ServerKeyVerifier> {
        Arc::new(ServerKeyVerifier { pin })
    }
}

impl rustls::client::danger::ServerCertVerifier for ServerKeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let Some(expected) = self.pin else {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        };
        let presented = spki_pin(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        if presented == expected {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        supported_verify_schemes()
    }
}

/// Bytes that are not a DER X.509 certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a valid X.509 certificate ({reason}); check that the file or the peer presents a \
     certificate (DER inside PEM \"CERTIFICATE\" blocks)"
)]
pub struct InvalidCertificate {
    pub reason: String,
}

fn parse<'a>(cert: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, InvalidCertificate> {
    X509Certificate::from_der(cert.as_ref())
        .map(|(_, parsed)| parsed)
        .map_err(|e| InvalidCertificate {
            reason: e.to_string(),
        })
}

/// The certificate's SPKI SHA-256 pin.
pub fn spki_pin(cert: &CertificateDer<'_>) -> Result<Pin, InvalidCertificate> {
    Ok(Pin::of_spki(parse(cert)?.public_key().raw))
}

/// The certificate's subject DN as text, e.g. `C=GB,O=Example,CN=alice`: what access policies
/// match and what [`parse_dn`](crate::parse_dn) reads back. See [`dn_string`] for the format.
pub fn subject_dn(cert: &CertificateDer<'_>) -> Result<String, InvalidCertificate> {
    Ok(dn_string(parse(cert)?.subject()))
}

/// Whether `name` (a DNS name, or an IP address, optionally in brackets) is covered by the
/// certificate's subjectAltName, the way TLS clients match host names: DNS names without regard
/// to case or a trailing dot, a leading `*.` matching exactly one label, addresses only by IP
/// SANs. The CN never counts: RFC 6125 clients, rustls among them, ignore it.
pub fn name_is_covered(cert: &CertInfo, name: &str) -> bool {
    let bare = name.trim().trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return cert.ip_addresses.contains(&ip);
    }
    let wanted = bare.trim_end_matches('.').to_ascii_lowercase();
    cert.dns_names.iter().any(|pattern| {
        let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            Some(suffix) => wanted
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
            None => pattern == wanted,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn issued(sans: Vec<SanType>) -> (CertificateDer<'static>, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "h1.example.com");
        params.subject_alt_names = sans;
        let cert = params.self_signed(&key).unwrap();
        (cert.der().clone(), key)
    }

    fn info(sans: Vec<SanType>) -> CertInfo {
        crate::parse_certificate(&issued(sans).0, 0).unwrap()
    }

    fn dns(name: &str) -> SanType {
        SanType::DnsName(name.try_into().unwrap())
    }

    #[test]
    fn every_crate_gets_the_same_provider() {
        assert!(Arc::ptr_eq(&provider(), &provider()));
        assert!(supported_verify_schemes().contains(&SignatureScheme::ECDSA_NISTP256_SHA256));
    }

    /// Runs a TLS handshake in memory against a server presenting a fresh certificate; the
    /// client trusts the key `pin_for(its certificate)` names (`None`: any key).
    fn handshake(
        pin_for: impl FnOnce(&CertificateDer<'static>) -> Option<Pin>,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> Result<(), rustls::Error> {
        let (cert, key) = issued(vec![dns("h1.example.com")]);
        let pin = pin_for(&cert);
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[version])?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)?;
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[version])?
            .dangerous()
            .with_custom_certificate_verifier(ServerKeyVerifier::new(pin))
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("h1.example.com").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client), name)?;
        let mut server = rustls::ServerConnection::new(Arc::new(server))?;
        while client.is_handshaking() || server.is_handshaking() {
            let mut wire = Vec::new();
            client.write_tls(&mut wire).unwrap();
            server.read_tls(&mut wire.as_slice()).unwrap();
            server.process_new_packets()?;
            wire.clear();
            server.write_tls(&mut wire).unwrap();
            client.read_tls(&mut wire.as_slice()).unwrap();
            client.process_new_packets()?;
        }
        Ok(())
    }

    #[test]
    fn a_server_key_verifier_takes_its_pin_or_any_key_and_refuses_another_over_tls12_and_tls13() {
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            handshake(|own| Some(spki_pin(own).unwrap()), version).unwrap();
            handshake(|_| None, version).unwrap();
            let other = Pin::from_bytes([7; 32]);
            assert!(matches!(
                handshake(|_| Some(other), version),
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure
                ))
            ));
        }
    }

    #[test]
    fn the_pin_is_the_sha256_of_the_keys_subject_public_key_info() {
        let (cert, key) = issued(vec![]);
        // rcgen's own encoding of the public key: an oracle independent of x509-parser.
        let expected = Pin::of_spki(&rcgen::PublicKeyData::subject_public_key_info(&key));
        assert_eq!(spki_pin(&cert).unwrap(), expected);
    }

    #[test]
    fn bytes_that_are_not_a_certificate_have_no_pin_and_no_subject() {
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(spki_pin(&junk)
            .unwrap_err()
            .to_string()
            .contains("not a valid X.509 certificate"));
        assert!(subject_dn(&junk).is_err());
    }

    #[test]
    fn host_names_match_like_a_tls_client_matches_them() {
        let cert = info(vec![
            dns("gw.example.com"),
            dns("*.lab.example.com"),
            SanType::IpAddress("10.0.0.1".parse().unwrap()),
            SanType::IpAddress("::1".parse().unwrap()),
        ]);
        for covered in [
            "gw.example.com",
            "GW.Example.com.",
            " gw.example.com ",
            "h1.lab.example.com",
            "10.0.0.1",
            "::1",
            "[::1]",
        ] {
            assert!(name_is_covered(&cert, covered), "{covered}");
        }
        for not_covered in [
            "gw",
            "example.com",
            "lab.example.com",
            "a.b.lab.example.com",
            ".lab.example.com",
            "10.0.0.2",
            "127.0.0.1",
            "h1.example.com",
        ] {
            assert!(!name_is_covered(&cert, not_covered), "{not_covered}");
        }
    }

    #[test]
    fn an_ip_address_is_only_covered_by_an_ip_san() {
        let cert = info(vec![dns("10.0.0.1")]);
        assert!(!name_is_covered(&cert, "10.0.0.1"));
    }
}
