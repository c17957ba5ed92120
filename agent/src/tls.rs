//! The agent's TLS: 1.3 only (the check binds to the RFC 9266 exporter), no session tickets
//! (a libvirt client reads exactly one record after the handshake), and a client certificate
//! required whose key is one of the pinned gateway keys — nothing else completes a handshake.

use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError, OtherError,
    ServerConfig, SignatureScheme,
};
use virtgate_pki::Pin;

use crate::state::Identity;
use crate::AgentError;

/// The gateway keys accepted now; replaced as a whole when a rotation changes them.
#[derive(Debug, Default)]
pub struct GatewayPins(RwLock<Vec<Pin>>);

impl GatewayPins {
    pub fn new(pins: Vec<Pin>) -> Arc<GatewayPins> {
        Arc::new(GatewayPins(RwLock::new(pins)))
    }

    pub fn replace(&self, pins: Vec<Pin>) {
        *self.0.write().expect("pins lock poisoned") = pins;
    }

    pub fn get(&self) -> Vec<Pin> {
        self.0.read().expect("pins lock poisoned").clone()
    }

    fn contains(&self, pin: &Pin) -> bool {
        self.0.read().expect("pins lock poisoned").contains(pin)
    }
}

/// A client presented a key that is not a pinned gateway key.
#[derive(Debug, thiserror::Error)]
#[error("client key sha256:{presented} is not a gateway key this agent accepts (enrollment or `--gateway-pin` sets them)")]
pub struct UnknownGateway {
    pub presented: String,
}

#[derive(Debug)]
struct GatewayVerifier {
    pins: Arc<GatewayPins>,
}

impl ClientCertVerifier for GatewayVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        let presented = virtgate_pki::spki_pin(end_entity)
            .map_err(|_| TlsError::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.pins.contains(&presented) {
            return Ok(ClientCertVerified::assertion());
        }
        let unknown = UnknownGateway {
            presented: presented.to_string(),
        };
        Err(TlsError::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(unknown)),
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

/// The server configuration: this identity, TLS 1.3, no tickets, pinned gateway clients.
pub fn server_config(
    identity: &Identity,
    pins: Arc<GatewayPins>,
) -> Result<Arc<ServerConfig>, AgentError> {
    let verifier = Arc::new(GatewayVerifier { pins });
    let mut config = ServerConfig::builder_with_provider(virtgate_pki::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| AgentError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| AgentError::Tls(e.to_string()))?;
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}
