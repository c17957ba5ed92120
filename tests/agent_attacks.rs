//! What the agent check stops, with real peers: a party that terminates TLS between gateway
//! and agent — holding the agent's key (from a copy of its state directory) and the gateway's
//! key — and forwards every byte of the check between its two sessions; and a copy of the
//! agent's state directory used to pass as the gateway.
#![allow(clippy::disallowed_types)] // synchronous test code: std's clock is the right one

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::agent::Agent;
use common::gateway::{identity, text, virsh, Gateway};
use common::tap::UnixTap;
use common::{free_port, sample};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use virtgate_pake::{driver, Binding, PakeError, Purpose, Secret};
use virtgate_pki::rustls::{self, pki_types::ServerName};
use virtgate_testlab::libvirtd::{Libvirtd, LibvirtdOptions};

const RULES: &str = r#"
[[proxy.rules]]
identity = "*CN=alice"
hosts = ["*"]
mode = "rw"
"#;

/// A TLS client towards the agent presenting `cert`/`key`.
fn client(cert: &Path, key: &Path) -> tokio_rustls::TlsConnector {
    let config = rustls::ClientConfig::builder_with_provider(virtgate_pki::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        // Any server key, as a relay in the middle would take.
        .with_custom_certificate_verifier(virtgate_pki::ServerKeyVerifier::any_key())
        .with_client_auth_cert(
            virtgate_pki::read_certs(cert).unwrap(),
            virtgate_pki::read_key(key).unwrap(),
        )
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Copies the agent's state directory, as someone who got hold of it would.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// The relay: TLS server at `listen` with the stolen agent key, TLS client to `agent` with the
/// stolen gateway key, every byte forwarded both ways. Counts what it forwarded.
fn relay(
    listen: SocketAddr,
    agent: SocketAddr,
    stolen_state: &Path,
    gateway_pki: &Path,
) -> Arc<AtomicU64> {
    let forwarded = Arc::new(AtomicU64::new(0));
    let server = rustls::ServerConfig::builder_with_provider(virtgate_pki::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            virtgate_pki::read_certs(&stolen_state.join("cert.pem")).unwrap(),
            virtgate_pki::read_key(&stolen_state.join("key.pem")).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let connector = client(
        &gateway_pki.join("clientcert.pem"),
        &gateway_pki.join("clientkey.pem"),
    );
    let counted = forwarded.clone();
    let listener = std::net::TcpListener::bind(listen).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, connector, counted) =
                    (acceptor.clone(), connector.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(front) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(back) = tokio::net::TcpStream::connect(agent).await else {
                        return;
                    };
                    let name = ServerName::try_from("agent").unwrap();
                    let Ok(back) = connector.connect(name, back).await else {
                        return;
                    };
                    let (front_r, mut front_w) = tokio::io::split(front);
                    let (back_r, mut back_w) = tokio::io::split(back);
                    let up = forward(front_r, &mut back_w, &counted);
                    let down = forward(back_r, &mut front_w, &counted);
                    tokio::join!(up, down);
                });
            }
        });
    });
    forwarded
}

/// Copies `from` into `to` until either ends, counting every byte in `counted` as it passes
/// (an agent that refuses resets the connection: what went through before still counts).
async fn forward<R, W>(mut from: R, to: &mut W, counted: &AtomicU64)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        counted.fetch_add(n as u64, Ordering::Relaxed);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// The test domain's state, asked of libvirtd directly.
fn domstate(libvirtd: &Libvirtd) -> String {
    let out = libvirtd.virsh(&["domstate", "test"]).unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A real libvirtd, a gateway, and an agent enrolled as h1 that reaches libvirtd through a tap.
struct Lab {
    libvirtd: Libvirtd,
    dir: tempfile::TempDir,
    gw: Gateway,
    agent: Agent,
    libvirt: UnixTap,
}

impl Lab {
    fn enrolled() -> Lab {
        let libvirtd = Libvirtd::start(LibvirtdOptions::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let gw = Gateway::start(dir.path(), &libvirtd, RULES);
        let mut agent = Agent::new(dir.path(), &libvirtd);
        let libvirt = UnixTap::start(&dir.path().join("libvirt-tap.sock"), &agent.socket);
        agent.socket = libvirt.path.clone();
        agent.enroll_and_start(&gw, "h1");
        Lab {
            libvirtd,
            dir,
            gw,
            agent,
            libvirt,
        }
    }
}

#[test]
fn a_relay_that_terminates_tls_with_both_stolen_keys_and_forwards_the_check_fails_it() {
    let Lab {
        libvirtd,
        dir,
        gw,
        mut agent,
        libvirt,
    } = Lab::enrolled();
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    let via = gw.uri("127.0.0.1", "h1", &alice);
    assert!(virsh(&via, &["hostname"]).status.success());
    assert_eq!(
        libvirt.accepted(),
        1,
        "the control call reached libvirtd through the tap"
    );
    let state = domstate(&libvirtd);

    // The attacker has a copy of the agent's state directory and the gateway's backend key. It
    // sits where the gateway reaches the host; the real agent moves to another port.
    let stolen = dir.path().join("stolen-state");
    copy_dir(&agent.state_dir, &stolen);
    let front: SocketAddr = agent.address().parse().unwrap();
    agent.process.take().unwrap().stop(Duration::from_secs(5));
    agent.port = free_port();
    agent.start();
    let gateway_pki = libvirtd.dir().join("client-gateway");
    let forwarded = relay(
        front,
        agent.address().parse().unwrap(),
        &stolen,
        &gateway_pki,
    );

    let out = virsh(&via, &["suspend", "test"]);
    assert!(
        !out.status.success(),
        "the relayed session must not pass: {}",
        text(&out)
    );
    assert!(
        text(&out)
            .contains("virtgate: host h1 failed the agent check: the PAKE proof did not verify"),
        "{}",
        text(&out)
    );
    assert!(
        forwarded.load(Ordering::Relaxed) > 0,
        "the relay did carry the check's messages between its two sessions"
    );
    let metrics = gw.metrics();
    assert!(
        sample(
            &metrics,
            "virtgate_proxy_secondary_checks_total",
            &[("host", "h1"), ("result", "failed")]
        )
        .unwrap_or_default()
            >= 1.0,
        "{metrics}"
    );
    // The agent counts the failure when the gateway's verdict reaches it through the relay.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sample(
        &agent.metrics(),
        "virtgate_agent_checks_total",
        &[("result", "failed")],
    )
    .unwrap_or_default()
        < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent saw the failed proof too: {}",
            agent.metrics()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The host: libvirtd was offered no connection, and the call changed nothing.
    assert_eq!(libvirt.accepted(), 1, "no connection reached libvirtd");
    assert_eq!(domstate(&libvirtd), state);
}

#[test]
fn a_copy_of_the_agent_state_directory_does_not_pass_the_check_as_the_gateway() {
    let Lab {
        libvirtd,
        dir,
        gw,
        mut agent,
        libvirt,
    } = Lab::enrolled();
    let stolen = dir.path().join("stolen-state");
    copy_dir(&agent.state_dir, &stolen);

    // The per-host secret is nowhere in it: only the OPAQUE record of it.
    let secret_file = std::fs::read_to_string(gw.data_dir.join("agent-secrets/h1")).unwrap();
    let secret = virtgate_pake::HostSecret::parse(&secret_file).unwrap();
    for entry in std::fs::read_dir(&stolen).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let hex = secret.secret.to_hex();
        assert!(!bytes.windows(32).any(|w| w == secret.secret.as_bytes()));
        assert!(!String::from_utf8_lossy(&bytes).contains(hex.as_str()));
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr: SocketAddr = agent.address().parse().unwrap();
    // With the only key in the copy (the agent's own) the handshake is refused.
    let agent_key = client(&stolen.join("cert.pem"), &stolen.join("key.pem"));
    let refused = rt.block_on(attempt(&agent_key, addr, Secret::generate(), 1));
    assert!(matches!(refused, Err(PakeError::Io(_))), "{refused:?}");
    // Even with the gateway's key as well, what the copy holds is no secret: a proof made of it
    // fails.
    let pki = libvirtd.dir().join("client-gateway");
    let gateway_key = client(&pki.join("clientcert.pem"), &pki.join("clientkey.pem"));
    let record = std::fs::read(stolen.join("enrollment.json")).unwrap();
    let guess = Secret::from_bytes(&record[..32]);
    let failed = rt.block_on(attempt(&gateway_key, addr, guess, secret.generation));
    assert!(matches!(failed, Err(PakeError::ProofFailed)), "{failed:?}");
    let process = agent.process.as_mut().unwrap();
    // The agent logs each verdict as the connection ends.
    let logged = process.wait_for_stderr("check_failed", Duration::from_secs(10));
    let log = process.stderr_text();
    assert!(logged.is_ok(), "{log}");
    assert!(log.contains("refused before any PAKE message"), "{log}");
    // The host: libvirtd was offered no connection.
    assert_eq!(libvirt.accepted(), 0, "no connection reached libvirtd");
}

async fn attempt(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    secret: Secret,
    generation: u32,
) -> Result<(), PakeError> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::try_from("agent").unwrap(), tcp)
        .await?;
    let binding = Binding::of(tls.get_ref().1)?;
    driver::prove(&mut tls, Purpose::Relay, generation, &secret, &binding).await
}
