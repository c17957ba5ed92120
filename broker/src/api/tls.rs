//! HTTPS for the API: the broker's certificate, and the CAs whose client certificates (proxies'
//! backend identities) may read the inventory. A client certificate is optional at the TLS
//! layer — tokens and the open endpoints (`/metrics`, `/healthz`) need none — but one that is
//! presented must verify, or the handshake fails.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::tls::{provider, read_certs, read_key, TlsSetupError};

/// The API's TLS configuration: `cert`/`key` (PEM) and the client CAs (may be empty: no client
/// certificates are asked for).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_cas: &[PathBuf],
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let invalid = |path: &Path, reason: String| TlsSetupError::Invalid {
        path: path.display().to_string(),
        reason,
    };
    let chain = read_certs(cert)?;
    let key_der = read_key(key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(cert, e.to_string()))?;
    let builder = if client_cas.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for path in client_cas {
            for ca in read_certs(path)? {
                roots.add(ca).map_err(|e| {
                    invalid(
                        path,
                        format!("{e}; broker.proxy_ca_files must name PEM CA certificates"),
                    )
                })?;
            }
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| invalid(&client_cas[0], e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder.with_single_cert(chain, key_der).map_err(|e| {
        invalid(
            key,
            format!("{e}; broker.tls_key_file must be the key of broker.tls_cert_file"),
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
