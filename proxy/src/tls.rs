//! TLS on both legs.
//!
//! Client side: TLS 1.2/1.3, a client certificate is required and verified against the configured
//! CAs (and CRL), and **no TLS 1.3 session tickets** are sent: a libvirt client reads exactly one
//! record after the handshake and expects the `0x01` confirmation byte in it.
//! Host side: the gateway's own client certificate; the host is verified by its approved SPKI pin
//! or, when CAs are configured, by CA and name.
//! The material is published through a `watch` channel so a reload swaps it atomically.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use virtgate_pki::Pin;

#[derive(Debug, thiserror::Error)]
pub enum ProxyTlsError {
    #[error(transparent)]
    File(#[from] virtgate_pki::PemError),
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error(
        "proxy.{0} is not set; set it, or run `virtgate up`, which generates a development PKI"
    )]
    Missing(&'static str),
}

pub use virtgate_pki::{provider, read_certs, read_crls, read_key};

/// Paths of the TLS material, so it can be read again on reload.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cas: Vec<PathBuf>,
    pub crl: Option<PathBuf>,
    pub backend_cert: PathBuf,
    pub backend_key: PathBuf,
    pub backend_cas: Vec<PathBuf>,
}

/// Everything TLS the proxy needs, as one immutable snapshot.
pub struct TlsMaterial {
    pub server: Arc<ServerConfig>,
    /// The client certificate check of `server`, kept to check open sessions again on reload.
    client_verifier: Arc<dyn ClientCertVerifier>,
    /// The earliest `nextUpdate` of the CRLs (Unix seconds): past it, the CRL is stale.
    pub crl_next_update: Option<i64>,
    pub backend_chain: Vec<CertificateDer<'static>>,
    pub backend_key: PrivateKeyDer<'static>,
    pub backend_ca: Option<Arc<WebPkiServerVerifier>>,
    /// The gateway's own certificates, for expiry metrics: (role, DER).
    pub own_certificates: Vec<(String, CertificateDer<'static>)>,
}

impl TlsMaterial {
    /// Loads `files`; client certificates are required.
    pub fn load(files: &TlsFiles) -> Result<Self, ProxyTlsError> {
        Self::load_for(files, crate::auth::FrontAuth::Certificate)
    }

    /// Loads `files`; client certificates are optional when `front_auth` lets clients log in
    /// with a password instead (one that is presented must still verify).
    pub fn load_for(
        files: &TlsFiles,
        front_auth: crate::auth::FrontAuth,
    ) -> Result<Self, ProxyTlsError> {
        let provider = provider();
        let server_chain = read_certs(&files.server_cert)?;
        let server_key = read_key(&files.server_key)?;
        let mut roots = RootCertStore::empty();
        let mut own = vec![("proxy_server".to_string(), server_chain[0].clone())];
        for ca in &files.client_cas {
            for cert in read_certs(ca)? {
                roots
                    .add(cert.clone())
                    .map_err(|e| ProxyTlsError::Invalid {
                        what: ca.display().to_string(),
                        reason: e.to_string(),
                    })?;
                own.push(("ca".to_string(), cert));
            }
        }
        if roots.is_empty() {
            return Err(ProxyTlsError::Missing("client_ca_files"));
        }
        let mut verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        let mut crl_next_update = None;
        if let Some(crl) = &files.crl {
            let crls = read_crls(crl)?;
            crl_next_update = earliest_next_update(&crls);
            verifier = verifier.with_crls(crls);
        }
        if front_auth.certificate_optional() {
            verifier = verifier.allow_unauthenticated();
        }
        let verifier = verifier.build().map_err(|e| ProxyTlsError::Invalid {
            what: "client CA / CRL".into(),
            reason: e.to_string(),
        })?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ProxyTlsError::Invalid {
                what: "TLS versions".into(),
                reason: e.to_string(),
            })?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(server_chain, server_key)
            .map_err(|e| ProxyTlsError::Invalid {
                what: files.server_cert.display().to_string(),
                reason: e.to_string(),
            })?;
        server.send_tls13_tickets = 0;

        let backend_chain = read_certs(&files.backend_cert)?;
        let backend_key = read_key(&files.backend_key)?;
        own.push(("proxy_client".to_string(), backend_chain[0].clone()));
        let backend_ca = if files.backend_cas.is_empty() {
            None
        } else {
            let mut roots = RootCertStore::empty();
            for ca in &files.backend_cas {
                for cert in read_certs(ca)? {
                    roots.add(cert).map_err(|e| ProxyTlsError::Invalid {
                        what: ca.display().to_string(),
                        reason: e.to_string(),
                    })?;
                }
            }
            Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| ProxyTlsError::Invalid {
                        what: "backend CAs".into(),
                        reason: e.to_string(),
                    })?,
            )
        };
        Ok(Self {
            server: Arc::new(server),
            client_verifier: verifier,
            crl_next_update,
            backend_chain,
            backend_key,
            backend_ca,
            own_certificates: own,
        })
    }

    /// Checks a client's certificate chain (end entity first) as a new handshake would now.
    pub fn verify_client(&self, chain: &[CertificateDer<'static>]) -> Result<(), String> {
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return Err("no client certificate".into());
        };
        self.client_verifier
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// A client configuration for one host: trusted if it presents `pin`, or (when CAs are
    /// configured and `allow_ca`) a chain to them that covers `name`.
    pub fn backend_config(
        &self,
        pin: Option<Pin>,
        allow_ca: bool,
    ) -> Result<Arc<ClientConfig>, ProxyTlsError> {
        let provider = provider();
        let verifier = HostVerifier {
            pin,
            ca: if allow_ca {
                self.backend_ca.clone()
            } else {
                None
            },
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| ProxyTlsError::Invalid {
                what: "TLS versions".into(),
                reason: e.to_string(),
            })?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.backend_chain.clone(), self.backend_key.clone_key())
            .map_err(|e| ProxyTlsError::Invalid {
                what: "backend identity".into(),
                reason: e.to_string(),
            })?;
        // libvirtd never resumes; don't keep session state per host.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }
}

/// The earliest `nextUpdate` among `crls` (Unix seconds), if any states one.
fn earliest_next_update(
    crls: &[rustls::pki_types::CertificateRevocationListDer<'_>],
) -> Option<i64> {
    use virtgate_pki::x509_parser::prelude::{CertificateRevocationList, FromDer};
    crls.iter()
        .filter_map(|der| CertificateRevocationList::from_der(der.as_ref()).ok())
        .filter_map(|(_, crl)| crl.next_update().map(|t| t.timestamp()))
        .min()
}

/// The client's subject DN as the policy matches it: RDNs in certificate order, values escaped
/// as RFC 4514 says (`C=GB,O=Example,CN=alice`), so two different subjects never read the same.
pub fn subject_dn(cert: &CertificateDer<'_>) -> Option<String> {
    virtgate_pki::subject_dn(cert).ok()
}

/// The common name in a DN string, for short messages (`CN=alice`).
pub fn cn_of(dn: &str) -> &str {
    virtgate_pki::common_name_part(dn)
}

/// The host presented a key that is neither its approved pin nor vouched for by a CA: the
/// backend handshake fails with this inside `CertificateError::Other`, so callers can tell it
/// from every other failure by type.
#[derive(Debug, thiserror::Error)]
#[error("presented key {} is not the approved pin {}", show(.presented), show(.approved))]
pub struct PinMismatch {
    pub presented: Option<Pin>,
    pub approved: Option<Pin>,
}

fn show(pin: &Option<Pin>) -> String {
    pin.map_or_else(|| "(none)".into(), |p| p.to_string())
}

#[derive(Debug)]
struct HostVerifier {
    pin: Option<Pin>,
    ca: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for HostVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let presented = virtgate_pki::spki_pin(end_entity).ok();
        if self.pin.is_some() && presented == self.pin {
            return Ok(ServerCertVerified::assertion());
        }
        if let Some(ca) = &self.ca {
            if ca
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
                .is_ok()
            {
                return Ok(ServerCertVerified::assertion());
            }
        }
        let mismatch = PinMismatch {
            presented,
            approved: self.pin,
        };
        Err(TlsError::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(mismatch)),
        )))
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        virtgate_pki::verify_tls12_signature(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        virtgate_pki::verify_tls13_signature(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        virtgate_pki::supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Mode, Policy, Rule};
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn certificate(subject: &[(DnType, &str)]) -> CertificateDer<'static> {
        let mut params = CertificateParams::default();
        for (kind, value) in subject {
            params.distinguished_name.push(kind.clone(), *value);
        }
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn a_subject_that_only_looks_like_a_rule_is_not_that_identity() {
        // The rule names a three-attribute subject, CN=bob,O=Ops,O=Dev.
        let rule = Rule {
            identity: "CN=bob,O=Ops,O=Dev".into(),
            hosts: vec!["*".into()],
            mode: Mode::Rw,
        };
        let policy = Policy::new(&[rule]).unwrap();
        assert_eq!(policy.decide("CN=bob,O=Ops,O=Dev", "h1"), Some(Mode::Rw));
        // A certificate with one CN whose value holds ",O=Ops": written unescaped it would read
        // exactly like the rule.
        let lookalike = certificate(&[
            (DnType::OrganizationName, "Dev"),
            (DnType::CommonName, "bob,O=Ops"),
        ]);
        let dn = subject_dn(&lookalike).unwrap();
        assert_eq!(dn, "CN=bob\\,O=Ops,O=Dev");
        assert_eq!(policy.decide(&dn, "h1"), None);
    }
}
