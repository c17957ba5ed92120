//! TLS on both legs.
//!
//! Client side: TLS 1.2/1.3, a client certificate is required and verified against the configured
//! CAs (and CRL), and **no TLS 1.3 session tickets** are sent: a libvirt client reads exactly one
//! record after the handshake and expects the `0x01` confirmation byte in it.
//! Host side: the gateway's own client certificate; the host is verified by its approved SPKI pin
//! or, when CAs are configured, by CA and name.
//! The material is published through a `watch` channel so a reload swaps it atomically.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, ServerConfig,
    SignatureScheme,
};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Debug, thiserror::Error)]
pub enum ProxyTlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error(
        "proxy.{0} is not set; set it, or run `virtgate up`, which generates a development PKI"
    )]
    Missing(&'static str),
    #[error("{path} holds no {what} in PEM form")]
    Empty { path: String, what: &'static str },
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, ProxyTlsError> {
    std::fs::read(path).map_err(|source| ProxyTlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// PEM certificates.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ProxyTlsError> {
    let data = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(ProxyTlsError::Empty {
            path: path.display().to_string(),
            what: "certificate",
        });
    }
    Ok(certs)
}

pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, ProxyTlsError> {
    let data = read(path)?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| ProxyTlsError::Invalid {
            what: path.display().to_string(),
            reason: e.to_string(),
        })?
        .ok_or(ProxyTlsError::Empty {
            path: path.display().to_string(),
            what: "private key",
        })
}

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, ProxyTlsError> {
    let data = read(path)?;
    let pem: Vec<_> = rustls_pemfile::crls(&mut data.as_slice())
        .filter_map(Result::ok)
        .collect();
    Ok(if pem.is_empty() {
        vec![CertificateRevocationListDer::from(data)]
    } else {
        pem
    })
}

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
    pub backend_chain: Vec<CertificateDer<'static>>,
    pub backend_key: PrivateKeyDer<'static>,
    pub backend_ca: Option<Arc<WebPkiServerVerifier>>,
    /// The gateway's own certificates, for expiry metrics: (role, DER).
    pub own_certificates: Vec<(String, CertificateDer<'static>)>,
}

impl TlsMaterial {
    pub fn load(files: &TlsFiles) -> Result<Self, ProxyTlsError> {
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
        if let Some(crl) = &files.crl {
            verifier = verifier.with_crls(read_crls(crl)?);
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
            .with_client_cert_verifier(verifier)
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
            backend_chain,
            backend_key,
            backend_ca,
            own_certificates: own,
        })
    }

    /// A client configuration for one host: trusted if it presents `pin`, or (when CAs are
    /// configured and `allow_ca`) a chain to them that covers `name`.
    pub fn backend_config(
        &self,
        pin: Option<String>,
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
            provider: provider.clone(),
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

pub fn spki_sha256_hex(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    Some(hex::encode(Sha256::digest(parsed.public_key().raw)))
}

/// The client's subject DN as written in its certificate: RDNs in certificate order joined by
/// `,`, e.g. `C=GB,O=Example,CN=alice` (the form libvirt's `tls_allowed_dn_list` examples use).
pub fn subject_dn(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let mut parts = Vec::new();
    for rdn in parsed.subject().iter() {
        for atv in rdn.iter() {
            let key = match atv.attr_type().to_id_string().as_str() {
                "2.5.4.6" => "C".to_string(),
                "2.5.4.8" => "ST".to_string(),
                "2.5.4.7" => "L".to_string(),
                "2.5.4.10" => "O".to_string(),
                "2.5.4.11" => "OU".to_string(),
                "2.5.4.3" => "CN".to_string(),
                "2.5.4.5" => "serialNumber".to_string(),
                "0.9.2342.19200300.100.1.25" => "DC".to_string(),
                "0.9.2342.19200300.100.1.1" => "UID".to_string(),
                "1.2.840.113549.1.9.1" => "EMAIL".to_string(),
                other => other.to_string(),
            };
            let value = atv
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|_| hex::encode(atv.attr_value().data));
            parts.push(format!("{key}={value}"));
        }
    }
    Some(parts.join(","))
}

/// The common name in a DN string, for short messages (`CN=alice`).
pub fn cn_of(dn: &str) -> &str {
    dn.split(',').find(|p| p.starts_with("CN=")).unwrap_or(dn)
}

#[derive(Debug)]
struct HostVerifier {
    pin: Option<String>,
    ca: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
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
        let presented = spki_sha256_hex(end_entity);
        if let (Some(pin), Some(presented)) = (&self.pin, &presented) {
            if pin == presented {
                return Ok(ServerCertVerified::assertion());
            }
        }
        if let Some(ca) = &self.ca {
            if ca
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
                .is_ok()
            {
                return Ok(ServerCertVerified::assertion());
            }
        }
        Err(TlsError::General(format!(
            "presented key {} is not the approved pin {}",
            presented.unwrap_or_else(|| "(unparsable)".into()),
            self.pin.as_deref().unwrap_or("(none)")
        )))
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
