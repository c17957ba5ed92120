//! The broker's connections to agents: TLS 1.3 with its client identity (the gateway's backend
//! key, which the agent pins), then the enrollment or the rotation exchange of `virtgate-pake`.
//! Before enrollment the agent's key is unknown: it is accepted whatever it is, and trusted
//! only because the token's PAKE, bound to this TLS session, succeeds on it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use virtgate_pake::{
    driver, Binding, HostSecret, PakeError, Purpose, Record, Secret, ServerKeys, Settings,
};
use virtgate_pki::Pin;

/// The broker's client identity towards agents.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub pin: Pin,
}

/// Why an exchange with an agent failed; the words go to logs, listings and API answers.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS with {addr} failed: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the agent at {0} refused the broker's key sha256:{1}: it was given other --gateway-pin values; run the exact command `virtgate enroll` printed")]
    KeyRefused(SocketAddr, Pin),
    #[error("the agent at {0} did not prove the token: the token it was given is not this one (typed wrong or pasted in part)")]
    ProofFailed(SocketAddr),
    #[error("the agent at {0} refused: {1}")]
    Refused(SocketAddr, String),
    #[error("with the agent at {0}: {1}")]
    Pake(SocketAddr, PakeError),
    #[error("the agent at {0} did not finish within {1:?}")]
    Timeout(SocketAddr, Duration),
}

impl ExchangeError {
    fn of(addr: SocketAddr, pin: Pin, e: PakeError) -> ExchangeError {
        match e {
            PakeError::ProofFailed => ExchangeError::ProofFailed(addr),
            PakeError::Refused(why) => ExchangeError::Refused(addr, why),
            PakeError::Io(io) if is_alert(&io) => ExchangeError::KeyRefused(addr, pin),
            e => ExchangeError::Pake(addr, e),
        }
    }
}

fn is_alert(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|tls| matches!(tls, rustls::Error::AlertReceived(_)))
}

type Agent = TlsStream<TcpStream>;

/// TLS 1.3 to `addr` as `identity`; the agent's key must be `expected` (if given).
async fn connect(
    identity: &Identity,
    addr: SocketAddr,
    expected: Option<Pin>,
) -> Result<(Agent, Binding, Pin), ExchangeError> {
    let config = ClientConfig::builder_with_provider(virtgate_pki::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error(addr, e))?
        .dangerous()
        // The agent's key if it is known (`expected`), any key before enrollment.
        .with_custom_certificate_verifier(virtgate_pki::ServerKeyVerifier::new(expected))
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| tls_error(addr, e))?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| ExchangeError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::IpAddress(addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|source| ExchangeError::Tls { addr, source })?;
    let binding = Binding::of(tls.get_ref().1).map_err(|e| ExchangeError::Pake(addr, e))?;
    let pin = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| virtgate_pki::spki_pin(c).ok())
        .ok_or_else(|| ExchangeError::Pake(addr, PakeError::Protocol("no agent key".into())))?;
    Ok((tls, binding, pin))
}

fn tls_error(addr: SocketAddr, e: rustls::Error) -> ExchangeError {
    ExchangeError::Tls {
        addr,
        source: std::io::Error::other(e),
    }
}

/// Enrolls the agent at `addr` with the token `token_id` (checked with `verifier`), registering
/// `secret` with `settings`. Returns the agent's key pin, authenticated by the token's PAKE on
/// this very TLS session.
pub async fn enroll_at(
    identity: &Identity,
    addr: SocketAddr,
    token_id: &str,
    verifier: &(ServerKeys, Record),
    settings: &Settings,
    secret: &Secret,
    budget: Duration,
) -> Result<Pin, ExchangeError> {
    let exchange = async {
        let (mut tls, binding, pin) = connect(identity, addr, None).await?;
        let (keys, record) = verifier;
        let err = |e| ExchangeError::of(addr, identity.pin, e);
        driver::verify_token(&mut tls, token_id, keys, record, &binding)
            .await
            .map_err(err)?;
        driver::register(&mut tls, settings, secret)
            .await
            .map_err(err)?;
        Ok(pin)
    };
    tokio::time::timeout(budget, exchange)
        .await
        .map_err(|_| ExchangeError::Timeout(addr, budget))?
}

/// Tells the agent at `addr`, if it waits with the token `token_id` (which this broker will not
/// take), why. An agent that is not waiting for that token answers the hello with a refusal of
/// its own and is left alone.
pub async fn refuse_at(
    identity: &Identity,
    addr: SocketAddr,
    token_id: &str,
    why: &str,
    budget: Duration,
) {
    let refuse = async {
        let (mut tls, _, _) = connect(identity, addr, None).await.ok()?;
        let hello = virtgate_pake::Hello {
            purpose: Purpose::Enroll,
            generation: 0,
            token_id: token_id.to_string(),
            ke1: Vec::new(),
        };
        let hello = virtgate_pake::wire::Frame::Hello(hello);
        driver::write_frame(&mut tls, &hello).await.ok()?;
        match driver::read_frame(&mut tls).await.ok()? {
            virtgate_pake::wire::Frame::Ke1(_) => driver::refuse(&mut tls, why).await.ok(),
            _ => None,
        }
    };
    let _ = tokio::time::timeout(budget, refuse).await;
}

/// Proves `current` to the enrolled agent at `addr` (key `pin`), then registers `next` with
/// `settings`.
pub async fn rotate_at(
    identity: &Identity,
    addr: SocketAddr,
    pin: Pin,
    current: &HostSecret,
    settings: &Settings,
    next: &Secret,
    budget: Duration,
) -> Result<(), ExchangeError> {
    let exchange = async {
        let (mut tls, binding, _) = connect(identity, addr, Some(pin)).await?;
        let err = |e| ExchangeError::of(addr, identity.pin, e);
        driver::prove(
            &mut tls,
            Purpose::Rotate,
            current.generation,
            &current.secret,
            &binding,
        )
        .await
        .map_err(err)?;
        driver::register(&mut tls, settings, next)
            .await
            .map_err(err)
    };
    tokio::time::timeout(budget, exchange)
        .await
        .map_err(|_| ExchangeError::Timeout(addr, budget))?
}
