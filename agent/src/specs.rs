//! The agent in process over loopback, with a stand-in for libvirt's socket (an echo): the
//! enrollment exchange, the pinned gateway key checked before any PAKE message, the relay with
//! its `0x01` byte, a wrong secret, and a restart that keeps key and enrollment. The real-peer
//! versions (real libvirtd, virsh, mDNS in a lab) are `tests/agent_*.rs` of the binary.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener};
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use virtgate_pake::driver::{prove, register, verify_token};
use virtgate_pake::{Binding, PakeError, Purpose, Record, Secret, ServerKeys, Settings, Token};
use virtgate_pki::Pin;

use crate::{AgentConfig, Options};

struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    pin: Pin,
}

fn identity() -> Identity {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["gateway".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = cert.der().clone();
    Identity {
        pin: virtgate_pki::spki_pin(&der).unwrap(),
        chain: vec![der],
        key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    }
}

/// Accepts any server key (the test reads the pin afterwards).
#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        virtgate_pki::verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        virtgate_pki::verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        virtgate_pki::supported_verify_schemes()
    }
}

/// A TLS connection to the agent as `who`; retried while the agent starts.
async fn connect(port: u16, who: &Identity) -> (TlsStream<TcpStream>, Binding, Pin) {
    let config = rustls::ClientConfig::builder_with_provider(virtgate_pki::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_client_auth_cert(who.chain.clone(), who.key.clone_key())
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tries = 0;
    let tcp = loop {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(tcp) => break tcp,
            Err(_) if tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("agent not listening: {e}"),
        }
    };
    let name = ServerName::try_from("agent").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let binding = Binding::of(tls.get_ref().1).unwrap();
    let pin = virtgate_pki::spki_pin(&tls.get_ref().1.peer_certificates().unwrap()[0]).unwrap();
    (tls, binding, pin)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An echo standing in for libvirt's socket.
fn echo_socket(path: &std::path::Path) {
    let listener = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
}

fn options() -> Options {
    Options {
        default_hostname: "h1".into(),
        interfaces: None,
    }
}

#[tokio::test]
#[allow(clippy::too_many_lines)] // one story, read top to bottom
async fn enrolled_once_then_every_connection_proves_the_secret_and_reaches_libvirt() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("libvirt-sock");
    echo_socket(&socket);
    let port = free_port();
    let config = AgentConfig {
        listen: vec![([127, 0, 0, 1], port).into()],
        state_dir: dir.path().join("state"),
        libvirt_socket: socket,
        announce: false,
        metrics_listen: ([127, 0, 0, 1], 0).into(),
        ..AgentConfig::default()
    };
    let (gateway, stranger) = (identity(), identity());
    let token = Token::generate();
    let token_keys = ServerKeys::generate();
    let token_record =
        Record::register(&token_keys, token.secret_bytes(), token.id.as_bytes()).unwrap();
    let stop = CancellationToken::new();
    let waiting = tokio::spawn({
        let (config, token, pin) = (config.clone(), token.clone(), gateway.pin);
        async move { crate::enroll(&config, options(), token, vec![pin], stop).await }
    });

    // A key that is not the pinned gateway key gets no PAKE message: the handshake is refused.
    let (mut tls, binding, _) = connect(port, &stranger).await;
    let refused = verify_token(&mut tls, &token.id, &token_keys, &token_record, &binding).await;
    assert!(
        matches!(&refused, Err(PakeError::Io(e)) if e.to_string().contains("alert")),
        "{refused:?}"
    );

    let (mut tls, binding, agent_pin) = connect(port, &gateway).await;
    verify_token(&mut tls, &token.id, &token_keys, &token_record, &binding)
        .await
        .unwrap();
    let secret = Secret::generate();
    let settings = Settings {
        host: "h1".into(),
        generation: 1,
        gateway_pins: vec![*gateway.pin.as_bytes()],
    };
    register(&mut tls, &settings, &secret).await.unwrap();
    let enrolled = waiting.await.unwrap().unwrap();
    assert_eq!((enrolled.host.as_str(), enrolled.pin), ("h1", agent_pin));

    for round in 0..2 {
        // Serving, and again after a restart: the same key, still enrolled.
        let stop = CancellationToken::new();
        let serving = tokio::spawn({
            let (config, stop) = (config.clone(), stop.clone());
            async move { crate::serve(&config, options(), stop).await }
        });
        let (mut tls, binding, pin) = connect(port, &gateway).await;
        assert_eq!(pin, agent_pin, "round {round}: the agent keeps its key");
        prove(&mut tls, Purpose::Relay, 1, &secret, &binding)
            .await
            .unwrap();
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.unwrap();
        assert_eq!(byte, [1], "the byte a TLS libvirtd sends");
        tls.write_all(b"ping").await.unwrap();
        let mut echoed = [0u8; 4];
        tls.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"ping", "relayed to the libvirt socket and back");

        let (mut tls, binding, _) = connect(port, &gateway).await;
        let wrong = prove(&mut tls, Purpose::Relay, 1, &Secret::generate(), &binding).await;
        assert!(matches!(wrong, Err(PakeError::ProofFailed)), "{wrong:?}");
        stop.cancel();
        serving.await.unwrap().unwrap();
    }
    let state = std::fs::read_dir(dir.path().join("state")).unwrap();
    for file in state {
        let text = std::fs::read(file.unwrap().path()).unwrap();
        let hex = secret.to_hex();
        assert!(
            !text.windows(32).any(|w| w == secret.as_bytes())
                && !String::from_utf8_lossy(&text).contains(hex.as_str()),
            "the agent keeps no secret, only its OPAQUE record"
        );
    }
}
