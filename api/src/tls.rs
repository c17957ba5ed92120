//! HTTPS towards the broker: how the broker is verified (a CA, an SPKI pin, or both), and the
//! client certificate presented to it (a proxy's backend identity).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError, OtherError,
    RootCertStore, SignatureScheme,
};
use virtgate_pki::x509_parser::prelude::{FromDer, X509Certificate};
use virtgate_pki::{provider, read_certs, read_key, spki_pin, Pin};

use crate::client::ClientError;

/// What makes a broker's certificate acceptable. At least one of the two; with both, both
/// must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerTrust {
    /// PEM file of the CA(s) that issued the broker's certificate; the certificate must also
    /// cover the host name of the broker URL.
    pub ca_file: Option<PathBuf>,
    /// SPKI SHA-256 of the broker's key (any certificate for that key is accepted).
    pub pin: Option<Pin>,
}

impl BrokerTrust {
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.pin.is_none()
    }
}

/// A client certificate and its key (PEM files), presented when the broker asks for a
/// certificate from a CA that issued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The TLS configuration of a client of the broker.
pub fn client_config(
    trust: &BrokerTrust,
    identity: Option<&ClientIdentity>,
) -> Result<Arc<ClientConfig>, ClientError> {
    let verifier = Arc::new(BrokerVerifier {
        ca: trust.ca_file.as_deref().map(ca_verifier).transpose()?,
        pin: trust.pin,
    });
    if verifier.ca.is_none() && verifier.pin.is_none() {
        return Err(ClientError::NoTrust);
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::TlsSetup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => builder.with_client_cert_resolver(Arc::new(Identity::load(identity)?)),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn ca_verifier(path: &Path) -> Result<Arc<WebPkiServerVerifier>, ClientError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| {
            ClientError::TlsSetup(format!(
                "{}: {e}; --broker-ca must name the PEM certificate of the CA that issued the \
                 broker's certificate",
                path.display()
            ))
        })?;
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| ClientError::TlsSetup(format!("{}: {e}", path.display())))
}

/// A failed handshake in words: a verifier's own error (a pin mismatch) by its message, rustls'
/// errors as rustls words them.
pub(crate) fn describe(error: &std::io::Error) -> String {
    match error.get_ref().and_then(|e| e.downcast_ref::<TlsError>()) {
        Some(TlsError::InvalidCertificate(CertificateError::Other(other))) => {
            format!("invalid peer certificate: {}", other.0)
        }
        Some(tls) => tls.to_string(),
        None => error.to_string(),
    }
}

/// The broker's key is not the pinned one.
#[derive(Debug, thiserror::Error)]
#[error("the broker presents a key with pin {presented}, not the configured {expected}")]
struct PinMismatch {
    presented: Pin,
    expected: Pin,
}

/// Verifies the broker by CA (chain and host name), by pin, or by both. Either way the
/// broker's handshake signature is checked: it must hold the key it presents.
#[derive(Debug)]
struct BrokerVerifier {
    ca: Option<Arc<WebPkiServerVerifier>>,
    pin: Option<Pin>,
}

impl ServerCertVerifier for BrokerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        if let Some(ca) = &self.ca {
            ca.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        }
        if let Some(expected) = self.pin {
            let presented = spki_pin(end_entity)
                .map_err(|_| TlsError::InvalidCertificate(CertificateError::BadEncoding))?;
            if presented != expected {
                return Err(TlsError::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(PinMismatch {
                        presented,
                        expected,
                    })),
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        virtgate_pki::verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        virtgate_pki::verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        virtgate_pki::supported_verify_schemes()
    }
}

/// The client certificate, offered only to a broker that asks for one from a CA that issued
/// some certificate of the chain (or names no CA): a broker that trusts other CAs would refuse
/// the handshake over it, when a token could still have let the client in.
#[derive(Debug)]
struct Identity {
    key: Arc<CertifiedKey>,
    /// The raw DER issuer names of the chain's certificates.
    issuers: Vec<Vec<u8>>,
}

impl Identity {
    fn load(files: &ClientIdentity) -> Result<Self, ClientError> {
        let chain = read_certs(&files.cert_file)?;
        let key = read_key(&files.key_file)?;
        let bad = |reason: String| {
            ClientError::TlsSetup(format!(
                "client certificate {}: {reason}; proxy.backend_cert_file and backend_key_file \
                 must be a certificate and its key",
                files.cert_file.display()
            ))
        };
        let signing = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| bad(e.to_string()))?;
        let mut issuers = Vec::new();
        for der in &chain {
            let (_, cert) =
                X509Certificate::from_der(der.as_ref()).map_err(|e| bad(e.to_string()))?;
            issuers.push(cert.issuer().as_raw().to_vec());
        }
        let key = CertifiedKey::new(chain, signing);
        key.keys_match().map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            key: Arc::new(key),
            issuers,
        })
    }
}

impl ResolvesClientCert for Identity {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let wanted = root_hint_subjects.is_empty()
            || self
                .issuers
                .iter()
                .any(|issuer| root_hint_subjects.contains(&issuer.as_slice()));
        wanted.then(|| self.key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper_util::rt::TokioIo;
    use rustls::server::WebPkiClientVerifier;
    use rustls::ServerConfig;
    use tokio::sync::mpsc;
    use virtgate_pki::{Ca, ClientRequest, ServerRequest};

    use super::*;
    use crate::client::{BrokerUrl, Client};

    /// A CA in a temporary directory, and files issued by it.
    struct Pki {
        dir: tempfile::TempDir,
        ca: Ca,
    }

    impl Pki {
        fn new() -> Pki {
            let dir = tempfile::tempdir().unwrap();
            let ca = Ca::init(&dir.path().join("ca")).unwrap();
            Pki { dir, ca }
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        }

        fn ca_file(&self) -> PathBuf {
            self.ca.files().cert.clone()
        }

        /// A server certificate for localhost and 127.0.0.1: (cert file, key file).
        fn server(&self) -> (PathBuf, PathBuf) {
            let mut request = ServerRequest::new("localhost");
            request.ips = vec![[127, 0, 0, 1].into()];
            let issued = self.ca.sign_server(&request).unwrap();
            (
                self.write("server.pem", &issued.cert_pem),
                self.write("server-key.pem", &issued.key_pem),
            )
        }

        fn client(&self, dn: &str) -> ClientIdentity {
            let issued = self.ca.sign_client(&ClientRequest::new(dn)).unwrap();
            ClientIdentity {
                cert_file: self.write("client.pem", &issued.cert_pem),
                key_file: self.write("client-key.pem", &issued.key_pem),
            }
        }
    }

    /// An HTTPS server on loopback answering every request with `[]`; each connection reports
    /// whether the client presented a certificate. `client_ca` asks for (but does not require)
    /// client certificates from that CA.
    async fn broker(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> (SocketAddr, mpsc::UnboundedReceiver<bool>) {
        broker_at("127.0.0.1:0", cert, key, client_ca).await
    }

    async fn broker_at(
        bind: &str,
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> (SocketAddr, mpsc::UnboundedReceiver<bool>) {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in read_certs(ca).unwrap() {
                    roots.add(c).unwrap();
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .allow_unauthenticated()
                        .build()
                        .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(read_certs(cert).unwrap(), read_key(key).unwrap())
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let _ = tx.send(stream.get_ref().1.peer_certificates().is_some());
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"[]"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, rx)
    }

    fn client(addr: SocketAddr, host: &str) -> Client {
        Client::new(BrokerUrl::parse(&format!("https://{host}:{}", addr.port())).unwrap())
    }

    fn by_ca(ca_file: PathBuf) -> BrokerTrust {
        BrokerTrust {
            ca_file: Some(ca_file),
            pin: None,
        }
    }

    fn by_pin(pin: Pin) -> BrokerTrust {
        BrokerTrust {
            ca_file: None,
            pin: Some(pin),
        }
    }

    fn pin_of(cert: &Path) -> Pin {
        spki_pin(&read_certs(cert).unwrap()[0]).unwrap()
    }

    #[tokio::test]
    async fn a_broker_with_a_certificate_from_the_given_ca_is_reached_by_name_and_address() {
        let pki = Pki::new();
        let (cert, key) = pki.server();
        let (addr, _) = broker(&cert, &key, None).await;
        for host in ["localhost", "127.0.0.1"] {
            let hosts = client(addr, host)
                .with_tls(&by_ca(pki.ca_file()), None)
                .unwrap()
                .hosts()
                .await
                .unwrap();
            assert!(hosts.is_empty());
        }
    }

    #[tokio::test]
    async fn a_broker_whose_certificate_another_ca_issued_is_refused() {
        let (pki, other) = (Pki::new(), Pki::new());
        let (cert, key) = pki.server();
        let (addr, _) = broker(&cert, &key, None).await;
        let error = client(addr, "127.0.0.1")
            .with_tls(&by_ca(other.ca_file()), None)
            .unwrap()
            .hosts()
            .await
            .unwrap_err();
        assert!(matches!(error, ClientError::Tls { .. }), "{error}");
        assert!(error.to_string().contains("--broker-ca"), "{error}");
    }

    #[tokio::test]
    async fn a_pinned_broker_is_reached_by_its_key_whatever_its_name_and_another_key_is_refused() {
        let pki = Pki::new();
        let (cert, key) = pki.server();
        // The certificate covers localhost and 127.0.0.1, not 127.0.0.2: the pin alone decides.
        let (addr, _) = broker_at("127.0.0.2:0", &cert, &key, None).await;
        let pinned = client(addr, "127.0.0.2")
            .with_tls(&by_pin(pin_of(&cert)), None)
            .unwrap();
        assert!(pinned.hosts().await.unwrap().is_empty());
        let by_name = client(addr, "127.0.0.2")
            .with_tls(&by_ca(pki.ca_file()), None)
            .unwrap()
            .hosts()
            .await;
        assert!(by_name.is_err(), "a CA alone also checks the name");

        let error = client(addr, "127.0.0.2")
            .with_tls(&by_pin(Pin::from_bytes([7; 32])), None)
            .unwrap()
            .hosts()
            .await
            .unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains(&format!("presents a key with pin {}", pin_of(&cert)))
                && text.contains(&format!("not the configured {}", Pin::from_bytes([7; 32]))),
            "{text}"
        );

        // With both, both must hold: the right pin does not excuse another CA.
        let stranger = Pki::new();
        let both = BrokerTrust {
            ca_file: Some(stranger.ca_file()),
            pin: Some(pin_of(&cert)),
        };
        let error = client(addr, "127.0.0.2")
            .with_tls(&both, None)
            .unwrap()
            .hosts()
            .await
            .unwrap_err();
        assert!(matches!(error, ClientError::Tls { .. }), "{error}");
    }

    #[tokio::test]
    async fn a_client_certificate_is_offered_only_to_a_broker_that_asks_for_its_ca() {
        let (pki, other) = (Pki::new(), Pki::new());
        let (cert, key) = pki.server();
        let (addr, mut presented) = broker(&cert, &key, Some(&pki.ca_file())).await;
        let trust = by_ca(pki.ca_file());

        let known = pki.client("O=virtgate,CN=proxy");
        let with_known = client(addr, "127.0.0.1")
            .with_tls(&trust, Some(&known))
            .unwrap();
        assert!(with_known.hosts().await.unwrap().is_empty());
        assert_eq!(presented.recv().await, Some(true));

        // A certificate from a CA the broker does not ask for would fail the handshake; it is
        // kept back, and the request goes ahead without it (a token could still admit it).
        let unknown = other.client("O=virtgate,CN=proxy");
        let with_unknown = client(addr, "127.0.0.1")
            .with_tls(&trust, Some(&unknown))
            .unwrap();
        assert!(with_unknown.hosts().await.unwrap().is_empty());
        assert_eq!(presented.recv().await, Some(false));
    }

    #[tokio::test]
    async fn an_https_broker_with_nothing_to_verify_it_by_is_refused_before_connecting() {
        let error = Client::new(BrokerUrl::parse("https://127.0.0.1:9").unwrap())
            .with_tls(&BrokerTrust::default(), None)
            .unwrap_err();
        assert!(matches!(error, ClientError::NoTrust), "{error}");
        let error = Client::new(BrokerUrl::parse("https://127.0.0.1:9").unwrap())
            .hosts()
            .await
            .unwrap_err();
        assert!(
            matches!(error, ClientError::NoTrust | ClientError::Connect { .. }),
            "{error}"
        );
    }
}
