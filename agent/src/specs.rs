//! The agent in process over loopback, with a stand-in for libvirt's socket (an echo): the
//! enrollment exchange, the pinned gateway key checked before any PAKE message, the relay with
//! its `0x01` byte, a wrong secret, a restart that keeps key and enrollment, rotation adding and
//! retiring gateway keys, and the per-source limit on failed checks. The real-peer
//! versions (real libvirtd, virsh, mDNS in a lab) are `tests/agent_*.rs` of the binary.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
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

/// A TLS 1.3 client presenting `who`'s key, taking any agent key.
fn connector(who: &Identity) -> tokio_rustls::TlsConnector {
    let config = rustls::ClientConfig::builder_with_provider(virtgate_pki::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(virtgate_pki::ServerKeyVerifier::any_key())
        .with_client_auth_cert(who.chain.clone(), who.key.clone_key())
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A TLS connection to the agent as `who`; retried while the agent starts.
async fn connect(port: u16, who: &Identity) -> (TlsStream<TcpStream>, Binding, Pin) {
    let connector = connector(who);
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

/// An agent on a free loopback port with an echo for libvirt, its state under `dir`.
fn agent_config(dir: &std::path::Path, max_failed_checks_per_minute: u32) -> (AgentConfig, u16) {
    let socket = dir.join("libvirt-sock");
    echo_socket(&socket);
    let port = free_port();
    let config = AgentConfig {
        listen: vec![([127, 0, 0, 1], port).into()],
        state_dir: dir.join("state"),
        libvirt_socket: socket,
        announce: false,
        metrics_listen: ([127, 0, 0, 1], 0).into(),
        max_failed_checks_per_minute,
        ..AgentConfig::default()
    };
    (config, port)
}

/// Enrolls the agent of `config` as h1 for `gateway` (the broker's part played in process);
/// first, while it waits, checks that `stranger`'s key gets no PAKE message. Returns the
/// per-host secret of generation 1 and the agent's key.
async fn enroll_for(
    config: &AgentConfig,
    port: u16,
    gateway: &Identity,
    stranger: Option<&Identity>,
) -> (Secret, Pin) {
    let token = Token::generate();
    let token_keys = ServerKeys::generate();
    let token_record =
        Record::register(&token_keys, token.secret_bytes(), token.id.as_bytes()).unwrap();
    let waiting = tokio::spawn({
        let (config, token, pin) = (config.clone(), token.clone(), gateway.pin);
        let stop = CancellationToken::new();
        async move { crate::enroll(&config, options(), token, vec![pin], stop).await }
    });
    if let Some(stranger) = stranger {
        // A key that is not the pinned gateway key gets no PAKE message: the handshake is
        // refused.
        let (mut tls, binding, _) = connect(port, stranger).await;
        let refused = verify_token(&mut tls, &token.id, &token_keys, &token_record, &binding).await;
        assert!(
            matches!(&refused, Err(PakeError::Io(e)) if e.to_string().contains("alert")),
            "{refused:?}"
        );
    }
    let (mut tls, binding, agent_pin) = connect(port, gateway).await;
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
    (secret, agent_pin)
}

/// Whether the agent refuses `who`'s TLS handshake (its key is not accepted).
async fn key_refused(port: u16, who: &Identity, generation: u32, secret: &Secret) -> bool {
    let (mut tls, binding, _) = connect(port, who).await;
    let proved = prove(&mut tls, Purpose::Relay, generation, secret, &binding).await;
    matches!(&proved, Err(PakeError::Io(e)) if e.to_string().contains("alert"))
}

/// Rotation over a connection the current secret authenticates (what `virtgate enroll
/// --rotate` does): registers `next` as `generation` with the gateway keys `pins`.
async fn rotate(
    port: u16,
    by: &Identity,
    current: (u32, &Secret),
    next: (u32, &Secret),
    pins: &[&Identity],
) {
    let (mut tls, binding, _) = connect(port, by).await;
    prove(&mut tls, Purpose::Rotate, current.0, current.1, &binding)
        .await
        .unwrap();
    let settings = Settings {
        host: "h1".into(),
        generation: next.0,
        gateway_pins: pins.iter().map(|p| *p.pin.as_bytes()).collect(),
    };
    register(&mut tls, &settings, next.1).await.unwrap();
}

#[tokio::test]
async fn rotation_replaces_the_secret_and_adds_and_retires_gateway_keys_without_re_enrolling() {
    let dir = tempfile::tempdir().unwrap();
    let (config, port) = agent_config(dir.path(), 10);
    let (old, new) = (identity(), identity());
    let (first, _) = enroll_for(&config, port, &old, None).await;
    let stop = CancellationToken::new();
    let serving = tokio::spawn({
        let (config, stop) = (config.clone(), stop.clone());
        async move { crate::serve(&config, options(), stop).await }
    });
    assert!(
        key_refused(port, &new, 1, &first).await,
        "a key not yet added"
    );

    // Generation 2, and a new gateway key beside the old one.
    let second = Secret::generate();
    rotate(port, &old, (1, &first), (2, &second), &[&old, &new]).await;
    for who in [&old, &new] {
        let (mut tls, binding, _) = connect(port, who).await;
        prove(&mut tls, Purpose::Relay, 2, &second, &binding)
            .await
            .unwrap();
    }
    let (mut tls, binding, _) = connect(port, &new).await;
    let stale = prove(&mut tls, Purpose::Relay, 2, &first, &binding).await;
    assert!(
        matches!(stale, Err(PakeError::ProofFailed)),
        "generation 2 is the new secret: {stale:?}"
    );

    // Generation 3 from the new key, which retires the old one.
    let third = Secret::generate();
    rotate(port, &new, (2, &second), (3, &third), &[&new]).await;
    assert!(
        key_refused(port, &old, 3, &third).await,
        "a retired key is refused before any PAKE message"
    );
    let (mut tls, binding, _) = connect(port, &new).await;
    prove(&mut tls, Purpose::Relay, 3, &third, &binding)
        .await
        .unwrap();
    stop.cancel();
    serving.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_source_that_keeps_failing_the_check_is_refused_at_accept_for_the_minute() {
    let dir = tempfile::tempdir().unwrap();
    let (config, port) = agent_config(dir.path(), 3);
    let gateway = identity();
    enroll_for(&config, port, &gateway, None).await;
    let stop = CancellationToken::new();
    let serving = tokio::spawn({
        let (config, stop) = (config.clone(), stop.clone());
        async move { crate::serve(&config, options(), stop).await }
    });
    for _ in 0..3 {
        let (mut tls, binding, _) = connect(port, &gateway).await;
        let wrong = prove(&mut tls, Purpose::Relay, 1, &Secret::generate(), &binding).await;
        assert!(matches!(wrong, Err(PakeError::ProofFailed)), "{wrong:?}");
    }
    // From then on (once the agent has counted the third), even the right key gets no TLS
    // handshake from 127.0.0.1.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let handshake = connector(&gateway)
            .connect(ServerName::try_from("agent").unwrap(), tcp)
            .await;
        if handshake.is_err() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the source is still served after 3 failed checks"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    serving.await.unwrap().unwrap();
}

fn options() -> Options {
    Options {
        default_hostname: "h1".into(),
        interfaces: None,
    }
}

#[tokio::test]
async fn enrolled_once_then_every_connection_proves_the_secret_and_reaches_libvirt() {
    let dir = tempfile::tempdir().unwrap();
    let (config, port) = agent_config(dir.path(), 10);
    let (gateway, stranger) = (identity(), identity());
    let (secret, agent_pin) = enroll_for(&config, port, &gateway, Some(&stranger)).await;

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
