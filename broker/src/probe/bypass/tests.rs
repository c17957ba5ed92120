//! The bypass check against a fake libvirtd: a rustls server that asks for a client
//! certificate naming the CAs it is told to, and after the handshake sends libvirt's `0x01`
//! byte to the clients it is told to accept (closing on the others), as libvirtd does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use virtgate_api::{Host, HostSource, TrustState};
use virtgate_pki::{Ca, CaOptions, CaRole, Pin, BACKEND_DN};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{Checker, UsersCa, Verdict};
use crate::probe::{Presented, ProbeResult};

/// Which clients the fake libvirtd lets in (sends `0x01` to).
#[derive(Clone)]
enum Accepts {
    /// Every client, with a certificate or without (`tls_no_verify_certificate` and worse).
    Anyone,
    /// Every client that presents some certificate (`tls_no_verify_certificate = 1`).
    AnyCertificate,
    /// Clients whose certificate was issued by the CA with this subject (DER): a host that
    /// trusts that CA and has no `tls_allowed_dn_list`.
    IssuedBy(Vec<u8>),
    /// Nobody but the gateway, which these tests never are.
    Nobody,
}

#[derive(Debug)]
struct AskAnyone {
    hints: Vec<DistinguishedName>,
}

impl ClientCertVerifier for AskAnyone {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Like libvirtd: the handshake completes, the check comes after it.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        virtgate_pki::verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        virtgate_pki::verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        virtgate_pki::supported_verify_schemes()
    }
}

struct FakeLibvirtd {
    addr: SocketAddr,
    /// The certificate it presents, and its pin, as the certificate probe would have seen them.
    cert: CertificateDer<'static>,
    pin: Pin,
    connections: Arc<AtomicUsize>,
    /// Bytes each accepted client sent after the `0x01` byte.
    sent_after_byte: Arc<Mutex<Vec<usize>>>,
}

fn admits(accepts: &Accepts, chain: Option<&[CertificateDer<'_>]>) -> bool {
    let leaf = chain.and_then(|c| c.first());
    match (accepts, leaf) {
        (Accepts::Anyone, _) => true,
        (Accepts::AnyCertificate, leaf) => leaf.is_some(),
        (Accepts::IssuedBy(subject), Some(leaf)) => X509Certificate::from_der(leaf.as_ref())
            .is_ok_and(|(_, c)| c.issuer().as_raw() == subject.as_slice()),
        _ => false,
    }
}

async fn fake_libvirtd(hints: Vec<Vec<u8>>, accepts: Accepts) -> FakeLibvirtd {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_der = CertificateDer::from(cert.der().to_vec());
    let pin = virtgate_pki::spki_pin(&cert_der).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let verifier = AskAnyone {
        hints: hints.into_iter().map(DistinguishedName::from).collect(),
    };
    let config = ServerConfig::builder_with_provider(virtgate_pki::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(vec![cert_der.clone()], key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake = FakeLibvirtd {
        addr: listener.local_addr().unwrap(),
        cert: cert_der,
        pin,
        connections: Arc::default(),
        sent_after_byte: Arc::default(),
    };
    let (connections, sent) = (fake.connections.clone(), fake.sent_after_byte.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            connections.fetch_add(1, Ordering::SeqCst);
            let (acceptor, accepts, sent) = (acceptor.clone(), accepts.clone(), sent.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if !admits(&accepts, tls.get_ref().1.peer_certificates()) {
                    return; // libvirtd closes without the byte
                }
                if tls.write_all(&[1]).await.is_err() || tls.flush().await.is_err() {
                    return; // the client went away first
                }
                let mut rest = Vec::new();
                let _ = tls.read_to_end(&mut rest).await;
                sent.lock().unwrap().push(rest.len());
            });
        }
    });
    fake
}

/// A users' CA (on disk, so the broker can load its key), and the subject (DER) a
/// certificate request names it by.
fn users_ca() -> (Ca, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap().keep();
    let ca = Ca::init_with(
        &dir.join("ca"),
        &CaOptions {
            role: Some(CaRole::Users),
            ..CaOptions::default()
        },
    )
    .unwrap();
    let subject = X509Certificate::from_der(ca.cert_der())
        .unwrap()
        .1
        .subject()
        .as_raw()
        .to_vec();
    (ca, subject)
}

fn checker(users: &(Ca, Vec<u8>), with_key: bool) -> Checker {
    let (ca, subject) = users;
    Checker {
        users_cas: vec![UsersCa {
            subject_der: subject.clone(),
            subject: ca.subject().to_string(),
        }],
        users_ca_key: with_key.then(|| Ca::load(ca.dir()).unwrap()),
        gateway_dn: BACKEND_DN.to_string(),
        durations: Histogram::with_opts(HistogramOpts::new("t", "t")).unwrap(),
    }
}

const TIMEOUT: Duration = Duration::from_secs(5);

async fn verdict(checker: &Checker, fake: &FakeLibvirtd) -> Option<Verdict> {
    checker.verdict(fake.addr, fake.pin, TIMEOUT).await
}

fn detail(v: Option<Verdict>) -> String {
    match v {
        Some(Verdict::Certain(d) | Verdict::Possible(d)) => d,
        other => panic!("expected a bypassable verdict, got {other:?}"),
    }
}

#[tokio::test]
async fn a_host_that_lets_clients_in_without_a_certificate_is_bypassable_for_certain() {
    let users = users_ca();
    let fake = fake_libvirtd(Vec::new(), Accepts::Anyone).await;

    let detail = detail(verdict(&checker(&users, false), &fake).await);

    assert!(
        detail.starts_with("certain: libvirtd at ")
            && detail.contains("accepted a client without a certificate")
            && detail.contains("tls_allowed_dn_list = [\"O=virtgate,CN=virtgate-gateway\"]"),
        "{detail}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = fake.sent_after_byte.lock().unwrap().clone();
    assert!(!sent.is_empty(), "the fake saw the accepted connection");
    assert!(
        sent.iter().all(|n| *n == 0),
        "nothing is sent after the 0x01 byte: {sent:?}"
    );
}

#[tokio::test]
async fn a_host_that_does_not_check_client_certificates_takes_one_from_a_throwaway_ca() {
    let users = users_ca();
    let fake = fake_libvirtd(Vec::new(), Accepts::AnyCertificate).await;

    let detail = detail(verdict(&checker(&users, false), &fake).await);

    assert!(
        detail.starts_with("certain: ")
            && detail.contains("from a throwaway CA it cannot trust")
            && detail.contains("O=virtgate-probe,CN=bypass-check"),
        "{detail}"
    );
}

#[tokio::test]
async fn a_host_that_names_the_users_ca_is_bypassable_unless_its_allow_list_keeps_users_out() {
    let users = users_ca();
    let fake = fake_libvirtd(vec![users.1.clone()], Accepts::Nobody).await;

    let verdict = verdict(&checker(&users, false), &fake).await;

    let Some(Verdict::Possible(detail)) = verdict else {
        panic!("expected possible, got {verdict:?}");
    };
    assert!(
        detail.starts_with("possible: ")
            && detail.contains(users.0.subject())
            && detail.contains("which signs users' certificates")
            && detail.contains("unless its tls_allowed_dn_list excludes them"),
        "{detail}"
    );
    assert_eq!(
        fake.connections.load(Ordering::SeqCst),
        2,
        "no key, no third try"
    );
}

#[tokio::test]
async fn with_the_users_ca_key_a_throwaway_user_certificate_settles_it() {
    let users = users_ca();
    let checker = checker(&users, true);

    let open = fake_libvirtd(vec![users.1.clone()], Accepts::IssuedBy(users.1.clone())).await;
    let detail = detail(verdict(&checker, &open).await);
    assert!(
        detail.starts_with("certain: ")
            && detail.contains("O=virtgate-probe,CN=bypass-check, which no rule allows")
            && detail.contains(&format!("from the users' CA {}", users.0.subject())),
        "{detail}"
    );

    // It trusts the users' CA, but its tls_allowed_dn_list keeps the throwaway DN out.
    let listed = fake_libvirtd(vec![users.1.clone()], Accepts::Nobody).await;
    assert_eq!(verdict(&checker, &listed).await, Some(Verdict::Closed));
    assert_eq!(listed.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_host_that_trusts_other_cas_and_refuses_everyone_else_is_closed() {
    let users = users_ca();
    let other = users_ca();
    let fake = fake_libvirtd(vec![other.1.clone()], Accepts::Nobody).await;

    assert_eq!(
        verdict(&checker(&users, true), &fake).await,
        Some(Verdict::Closed)
    );
    assert_eq!(
        fake.connections.load(Ordering::SeqCst),
        2,
        "the users' CA is not named: no throwaway user certificate"
    );

    // A request that names no CA cannot tell; with the key, the third try does.
    let silent_names = fake_libvirtd(Vec::new(), Accepts::Nobody).await;
    assert_eq!(
        verdict(&checker(&users, true), &silent_names).await,
        Some(Verdict::Closed)
    );
    assert_eq!(silent_names.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn no_answer_or_another_key_tells_nothing() {
    let users = users_ca();
    let checker = checker(&users, true);
    // Accepts connections, never answers: bounded by the timeout.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mute = listener.local_addr().unwrap();
    let fake = fake_libvirtd(vec![users.1.clone()], Accepts::Anyone).await;

    let started = tokio::time::Instant::now();
    let v = checker
        .verdict(mute, fake.pin, Duration::from_millis(300))
        .await;
    assert_eq!(v, None, "a mute host is not judged");
    assert!(started.elapsed() < Duration::from_secs(2));

    let wrong_pin = Pin::of_spki(b"some other key");
    assert_eq!(
        checker.verdict(fake.addr, wrong_pin, TIMEOUT).await,
        None,
        "answers with another key than the probe's are not about this host"
    );
    drop(listener);
}

#[tokio::test]
async fn a_host_whose_key_changed_is_not_checked() {
    let users = users_ca();
    let fake = fake_libvirtd(Vec::new(), Accepts::Anyone).await;
    let mut host = Host::new("h1", HostSource::Static, fake.addr.port(), Vec::new(), 0);
    // (a `changed` host would also have a chain on record; the probe's result is what counts)
    let probed = || ProbeResult {
        address: fake.addr.ip(),
        duration: Duration::ZERO,
        outcome: Ok(Presented {
            chain: vec![fake.cert.clone()],
            tls_version: String::new(),
            auth: None,
        }),
        bypass: None,
    };
    let checker = checker(&users, false);

    host.trust = TrustState::Changed;
    let mut results = vec![probed()];
    checker
        .check(&host, &mut results, fake.addr.port(), TIMEOUT)
        .await;
    assert_eq!(results[0].bypass, None);
    assert_eq!(fake.connections.load(Ordering::SeqCst), 0);

    host.trust = TrustState::Pinned;
    checker
        .check(&host, &mut results, fake.addr.port(), TIMEOUT)
        .await;
    assert!(
        matches!(&results[0].bypass, Some(Verdict::Certain(_))),
        "{:?}",
        results[0].bypass
    );
}
