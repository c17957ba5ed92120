//! The exchanges over in-memory TLS 1.3 sessions (`tokio::io::duplex`), including the case the
//! binding exists for: a relay that terminates TLS and forwards the messages.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{duplex, split, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use super::*;
use crate::opaque::Record;

struct Pki {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

fn pki() -> Pki {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["agent".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    Pki {
        cert: cert.der().clone(),
        key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    }
}

fn acceptor(pki: &Pki) -> TlsAcceptor {
    let config = rustls::ServerConfig::builder_with_provider(virtgate_pki::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![pki.cert.clone()], pki.key.clone_key())
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

fn connector(trusted: &Pki) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.cert.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(virtgate_pki::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

type Client = client::TlsStream<DuplexStream>;
type Server = server::TlsStream<DuplexStream>;

/// One TLS 1.3 session over a duplex pipe: (client end, server end).
async fn session(agent: &Pki) -> (Client, Server) {
    let (a, b) = duplex(64 * 1024);
    let name = ServerName::try_from("agent").unwrap();
    let (c, s) = tokio::join!(connector(agent).connect(name, a), acceptor(agent).accept(b));
    (c.unwrap(), s.unwrap())
}

fn client_binding(tls: &Client) -> Binding {
    Binding::of(tls.get_ref().1).unwrap()
}

fn server_binding(tls: &Server) -> Binding {
    Binding::of(tls.get_ref().1).unwrap()
}

/// An agent's keys and the record of `secret` at generation 1.
fn enrolled(secret: &Secret) -> (ServerKeys, Record) {
    let keys = ServerKeys::generate();
    let record = Record::register(&keys, secret.as_bytes(), &credential_for(1)).unwrap();
    (keys, record)
}

/// The agent's side of a relay connection: check, then its verdict.
async fn agent_side(
    mut tls: Server,
    binding: Binding,
    keys: ServerKeys,
    record: Record,
) -> Result<Server, PakeError> {
    let hello = read_hello(&mut tls).await?;
    check(&mut tls, &hello, &keys, Some(&record), &binding).await?;
    accept(&mut tls).await?;
    Ok(tls)
}

#[tokio::test]
async fn the_gateway_passes_with_the_registered_secret_and_both_sides_go_on_talking() {
    let agent = pki();
    let secret = Secret::generate();
    let (keys, record) = enrolled(&secret);
    let (mut gw, ag) = session(&agent).await;
    let (gw_binding, ag_binding) = (client_binding(&gw), server_binding(&ag));
    assert_eq!(
        gw_binding, ag_binding,
        "both ends of one session export the same value"
    );
    let (proved, checked) = tokio::join!(
        prove(&mut gw, Purpose::Relay, 1, &secret, &gw_binding),
        agent_side(ag, ag_binding, keys, record)
    );
    proved.unwrap();
    let mut ag = checked.unwrap();
    ag.write_all(&[1]).await.unwrap();
    ag.flush().await.unwrap();
    let mut byte = [0u8; 1];
    gw.read_exact(&mut byte).await.unwrap();
    assert_eq!(
        byte,
        [1],
        "the relay's first byte comes right after the verdict"
    );
}

#[tokio::test]
async fn a_wrong_secret_fails_on_both_sides_and_the_agent_is_told() {
    let agent = pki();
    let (keys, record) = enrolled(&Secret::generate());
    let (mut gw, ag) = session(&agent).await;
    let (gw_binding, ag_binding) = (client_binding(&gw), server_binding(&ag));
    let wrong = Secret::generate();
    let (proved, checked) = tokio::join!(
        prove(&mut gw, Purpose::Relay, 1, &wrong, &gw_binding),
        agent_side(ag, ag_binding, keys, record)
    );
    assert!(matches!(proved, Err(PakeError::ProofFailed)), "{proved:?}");
    assert!(
        matches!(&checked, Err(PakeError::ProofFailed)),
        "the agent learns that the gateway rejected its proof: {:?}",
        checked.err()
    );
}

/// A party in the middle that holds a key the gateway accepts (say, a copied agent key) and
/// one the agent accepts: it terminates the gateway's TLS, opens its own to the agent, and
/// forwards every byte of the check between the two sessions.
async fn through_a_relay(
    bind: impl Fn(Binding) -> Binding,
) -> (Result<(), PakeError>, Result<Server, PakeError>) {
    let agent = pki();
    let secret = Secret::generate();
    let (keys, record) = enrolled(&secret);
    let (mut gw, relay_front) = session(&agent).await;
    let (relay_back, ag) = session(&agent).await;
    let (gw_binding, ag_binding) = (bind(client_binding(&gw)), bind(server_binding(&ag)));
    let forward = async move {
        let (mut front_r, mut front_w) = split(relay_front);
        let (mut back_r, mut back_w) = split(relay_back);
        let up = async {
            let _ = tokio::io::copy(&mut front_r, &mut back_w).await;
            let _ = back_w.shutdown().await;
        };
        let down = async {
            let _ = tokio::io::copy(&mut back_r, &mut front_w).await;
            let _ = front_w.shutdown().await;
        };
        tokio::join!(up, down);
    };
    let relay = tokio::spawn(forward);
    let (proved, checked) = tokio::join!(
        prove(&mut gw, Purpose::Relay, 1, &secret, &gw_binding),
        agent_side(ag, ag_binding, keys, record)
    );
    drop(gw);
    relay.abort();
    (proved, checked)
}

#[tokio::test]
async fn a_relay_that_terminates_tls_and_forwards_the_messages_makes_the_check_fail() {
    let (proved, checked) = through_a_relay(|b| b).await;
    assert!(matches!(proved, Err(PakeError::ProofFailed)), "{proved:?}");
    assert!(
        checked.is_err(),
        "the agent must not accept the relayed session"
    );
}

/// The control for the test above: give both sides one fixed value instead of their session's
/// exporter — what the check would be without the channel binding — and the very same relay
/// passes. So it is the binding, not something else, that stops it.
#[tokio::test]
async fn without_the_channel_binding_the_same_relay_would_pass() {
    let fixed = Binding::from_bytes([7; 32]);
    let (proved, checked) = through_a_relay(|_| fixed.clone()).await;
    proved.unwrap();
    checked.unwrap();
}

#[tokio::test]
async fn enrollment_proves_the_token_both_ways_then_registers_the_host_secret() {
    let agent = pki();
    let token = Token::generate();
    let token_keys = ServerKeys::generate();
    let token_record =
        Record::register(&token_keys, token.secret_bytes(), token.id.as_bytes()).unwrap();
    let agent_keys = ServerKeys::generate();
    let secret = Secret::generate();
    let settings = Settings {
        host: "h1".into(),
        generation: 1,
        gateway_pins: vec![[5; 32]],
    };
    let (mut broker, mut ag) = session(&agent).await;
    let (b_binding, a_binding) = (client_binding(&broker), server_binding(&ag));
    let broker_side = async {
        verify_token(
            &mut broker,
            &token.id,
            &token_keys,
            &token_record,
            &b_binding,
        )
        .await?;
        register(&mut broker, &settings, &secret).await
    };
    let agent_side = async {
        let hello = read_hello(&mut ag).await?;
        assert_eq!(
            (hello.purpose, hello.token_id.as_str()),
            (Purpose::Enroll, token.id.as_str())
        );
        prove_token(&mut ag, &token, &a_binding).await?;
        let (got, record) = answer_registration(&mut ag, &agent_keys).await?;
        accept(&mut ag).await?;
        Ok::<_, PakeError>((got, record))
    };
    let (registered, answered) = tokio::join!(broker_side, agent_side);
    registered.unwrap();
    let (got, record) = answered.unwrap();
    assert_eq!(got, settings);

    // The record registered during enrollment checks the per-host secret on a new session.
    let (mut gw, ag) = session(&agent).await;
    let (g, a) = (client_binding(&gw), server_binding(&ag));
    let (proved, checked) = tokio::join!(
        prove(&mut gw, Purpose::Relay, 1, &secret, &g),
        agent_side_checked(ag, a, agent_keys, record)
    );
    proved.unwrap();
    checked.unwrap();
}

async fn agent_side_checked(
    tls: Server,
    b: Binding,
    keys: ServerKeys,
    record: Record,
) -> Result<Server, PakeError> {
    agent_side(tls, b, keys, record).await
}

#[tokio::test]
async fn a_wrong_token_fails_on_both_sides_with_words_for_each() {
    let agent = pki();
    let issued = Token::generate();
    let token_keys = ServerKeys::generate();
    let token_record =
        Record::register(&token_keys, issued.secret_bytes(), issued.id.as_bytes()).unwrap();
    // Same id, another secret: a token typed wrong.
    let typed: Token = format!("{}.{}", issued.id, "0".repeat(crate::TOKEN_SECRET_LEN))
        .parse()
        .unwrap();
    let (mut broker, mut ag) = session(&agent).await;
    let (b_binding, a_binding) = (client_binding(&broker), server_binding(&ag));
    let broker_side = verify_token(
        &mut broker,
        &issued.id,
        &token_keys,
        &token_record,
        &b_binding,
    );
    let agent_side = async {
        read_hello(&mut ag).await?;
        prove_token(&mut ag, &typed, &a_binding).await
    };
    let (verified, proved) = tokio::join!(broker_side, agent_side);
    assert!(matches!(proved, Err(PakeError::ProofFailed)), "{proved:?}");
    assert!(
        matches!(&verified, Err(PakeError::ProofFailed)),
        "{verified:?}"
    );
}

#[tokio::test]
async fn rotation_proves_the_current_secret_then_registers_the_next() {
    let agent = pki();
    let old = Secret::generate();
    let (keys, record) = enrolled(&old);
    let new = Secret::generate();
    let settings = Settings {
        host: "h1".into(),
        generation: 2,
        gateway_pins: vec![[1; 32], [2; 32]],
    };
    let (mut broker, mut ag) = session(&agent).await;
    let (b, a) = (client_binding(&broker), server_binding(&ag));
    let broker_side = async {
        prove(&mut broker, Purpose::Rotate, 1, &old, &b).await?;
        register(&mut broker, &settings, &new).await
    };
    let agent_side = async {
        let hello = read_hello(&mut ag).await?;
        assert_eq!(hello.purpose, Purpose::Rotate);
        check(&mut ag, &hello, &keys, Some(&record), &a).await?;
        accept(&mut ag).await?;
        let answered = answer_registration(&mut ag, &keys).await?;
        accept(&mut ag).await?;
        Ok::<_, PakeError>(answered)
    };
    let (rotated, answered) = tokio::join!(broker_side, agent_side);
    rotated.unwrap();
    let (got, next) = answered.unwrap();
    assert_eq!(got.generation, 2);

    let (mut gw, ag) = session(&agent).await;
    let (g, a) = (client_binding(&gw), server_binding(&ag));
    let (proved, checked) = tokio::join!(
        prove(&mut gw, Purpose::Relay, 2, &new, &g),
        agent_side_for(ag, a, keys.clone(), next)
    );
    proved.unwrap();
    checked.unwrap();
}

async fn agent_side_for(
    mut tls: Server,
    b: Binding,
    keys: ServerKeys,
    record: Record,
) -> Result<(), PakeError> {
    let hello = read_hello(&mut tls).await?;
    assert_eq!(hello.generation, 2);
    check(&mut tls, &hello, &keys, Some(&record), &b).await?;
    accept(&mut tls).await
}

#[tokio::test]
async fn a_proof_made_for_one_purpose_is_worth_nothing_for_another() {
    let agent = pki();
    let secret = Secret::generate();
    let (keys, record) = enrolled(&secret);
    let (mut gw, mut ag) = session(&agent).await;
    let (g, a) = (client_binding(&gw), server_binding(&ag));
    let agent_side = async {
        let mut hello = read_hello(&mut ag).await?;
        hello.purpose = Purpose::Relay; // the agent reads it as another purpose
        check(&mut ag, &hello, &keys, Some(&record), &a).await
    };
    let (proved, _) = tokio::join!(prove(&mut gw, Purpose::Rotate, 1, &secret, &g), agent_side);
    assert!(matches!(proved, Err(PakeError::ProofFailed)), "{proved:?}");
}
