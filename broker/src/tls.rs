//! TLS for probing: capture whatever chain a host presents, and judge it against configured CAs
//! separately, so an untrusted or broken certificate is still inventoried instead of hidden
//! behind a handshake failure.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::{ResolvesClientCert, Resumption, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, Error as TlsError, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error(transparent)]
    File(#[from] virtgate_pki::PemError),
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

pub(crate) use virtgate_pki::{provider, read_certs, read_key};

/// The CAs an operator trusts for hosts. Empty means "no CA configured": hosts are then trusted
/// only through approved pins.
#[derive(Clone)]
pub struct TrustAnchors {
    verifier: Option<Arc<WebPkiServerVerifier>>,
}

/// How a presented chain relates to the configured CAs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainVerdict {
    /// Chains to a configured CA, is valid now, and covers the host name.
    Trusted,
    /// Chains to a configured CA but fails for another reason (expired, name not covered, …).
    TrustedIssuerOnly(String),
    /// Does not chain to any configured CA.
    Untrusted(String),
    /// No CA configured.
    NoAnchors,
}

impl TrustAnchors {
    pub fn none() -> Self {
        Self { verifier: None }
    }

    pub fn from_files(files: &[impl AsRef<Path>]) -> Result<Self, TlsSetupError> {
        if files.is_empty() {
            return Ok(Self::none());
        }
        let mut roots = RootCertStore::empty();
        for file in files {
            let path = file.as_ref();
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|e| TlsSetupError::Invalid {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            }
        }
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsSetupError::Invalid {
                path: "trusted_ca_files".into(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            verifier: Some(verifier),
        })
    }

    pub fn is_configured(&self) -> bool {
        self.verifier.is_some()
    }

    pub fn verify(
        &self,
        chain: &[CertificateDer<'static>],
        host_name: &str,
        now: UnixTime,
    ) -> ChainVerdict {
        let Some(verifier) = &self.verifier else {
            return ChainVerdict::NoAnchors;
        };
        let Some((leaf, intermediates)) = chain.split_first() else {
            return ChainVerdict::Untrusted("no certificate presented".into());
        };
        let Ok(name) = ServerName::try_from(host_name.to_string()) else {
            return ChainVerdict::Untrusted(format!("{host_name:?} is not a valid server name"));
        };
        match verifier.verify_server_cert(leaf, intermediates, &name, &[], now) {
            Ok(_) => ChainVerdict::Trusted,
            Err(TlsError::InvalidCertificate(
                e @ (CertificateError::UnknownIssuer
                | CertificateError::BadSignature
                | CertificateError::BadEncoding
                | CertificateError::InvalidPurpose),
            )) => ChainVerdict::Untrusted(format!("{e:?}")),
            Err(e) => ChainVerdict::TrustedIssuerOnly(e.to_string()),
        }
    }
}

/// A probe configuration whose client certificate (if any) comes from `resolver`, which also
/// sees the CA names of the host's certificate request; no session resumption, so every
/// connection authenticates afresh. For the bypass check.
pub(crate) fn probe_config_with_resolver(
    resolver: Arc<dyn ResolvesClientCert>,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Invalid {
            path: "tls".into(),
            reason: e.to_string(),
        })?
        .dangerous()
        // Any key, so the chain can be recorded; the host still proves it holds the key.
        .with_custom_certificate_verifier(virtgate_pki::ServerKeyVerifier::any_key())
        .with_client_cert_resolver(resolver);
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// The probe's client configuration: capture any chain, present the client identity if given
/// (libvirtd requests a client certificate but does not require one for the handshake).
pub fn probe_client_config(
    client_identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Invalid {
            path: "tls".into(),
            reason: e.to_string(),
        })?
        .dangerous()
        // Any key, so the chain can be recorded; the host still proves it holds the key.
        .with_custom_certificate_verifier(virtgate_pki::ServerKeyVerifier::any_key());
    let config = match client_identity {
        Some((chain, key)) => {
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsSetupError::Invalid {
                    path: "client_cert_file".into(),
                    reason: e.to_string(),
                })?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
