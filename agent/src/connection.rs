//! One connection, from accept to close: TLS (a pinned gateway key or nothing), the client's
//! hello, the PAKE check bound to this session, then what the connection is for — relaying to
//! libvirt, a rotation, or (while waiting) the enrollment. One log line per connection.

use std::net::SocketAddr;
use std::pin::Pin as StdPin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::{timeout_at, Instant};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use virtgate_pake::driver::{accept, answer_registration, check, prove_token, read_hello, refuse};
use virtgate_pake::{Binding, Hello, PakeError, Purpose, Record, Settings, Token};
use virtgate_pki::Pin;

use crate::metrics::Ended;
use crate::server::{Mode, Service};
use crate::state::{now_unix, Enrollment};
use crate::tls::UnknownGateway;

type Tls = TlsStream<TcpStream>;
type Outcome = (Ended, String);

struct ActiveGuard(prometheus::IntGauge);
impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves one accepted connection and writes its one log line.
pub(crate) async fn serve(
    service: &Service,
    tcp: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    service.metrics.connections_active.inc();
    let _active = ActiveGuard(service.metrics.connections_active.clone());
    let (ended, detail) = run(service, tcp, peer, &shutdown).await;
    service.metrics.ended(ended);
    let result = ended.as_str();
    match ended {
        Ended::Relayed | Ended::IdleTimeout | Ended::Enrolled | Ended::Rotated => {
            info!(%peer, result, "{detail}");
        }
        Ended::Abandoned | Ended::RefusedSource | Ended::RefusedCapacity => {
            debug!(%peer, result, "{detail}");
        }
        _ => warn!(%peer, result, "{detail}"),
    }
}

async fn run(
    service: &Service,
    tcp: TcpStream,
    peer: SocketAddr,
    shutdown: &CancellationToken,
) -> Outcome {
    if service.limiter.refused(peer.ip()) {
        return (
            Ended::RefusedSource,
            "too many failed checks from this address in the last minute".into(),
        );
    }
    let budget = service.config.handshake_timeout;
    let deadline = Instant::now() + budget;
    let mut tls = match timeout_at(deadline, service.tls.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return (Ended::TlsFailed, describe_tls_error(&e)),
        Err(_) => {
            return (
                Ended::ProtocolError,
                format!("no TLS handshake within {budget:?}"),
            )
        }
    };
    let client = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| virtgate_pki::spki_pin(c).ok());
    let binding = match Binding::of(tls.get_ref().1) {
        Ok(b) => b,
        Err(e) => return (Ended::ProtocolError, e.to_string()),
    };
    let hello = match timeout_at(deadline, read_hello(&mut tls)).await {
        Ok(Ok(hello)) => hello,
        Ok(Err(PakeError::Closed)) => {
            return (
                Ended::Abandoned,
                "closed after TLS without starting the check".into(),
            )
        }
        Ok(Err(e)) => return (Ended::ProtocolError, format!("before the check: {e}")),
        Err(_) => return (Ended::ProtocolError, format!("no hello within {budget:?}")),
    };
    let cx = Cx {
        service,
        peer,
        client,
        binding,
        deadline,
    };
    match (&service.mode, hello.purpose) {
        (Mode::Enrolling { token, done }, Purpose::Enroll) => {
            let outcome = cx.enroll(&mut tls, &hello, token).await;
            match outcome {
                Ok(enrollment) => {
                    let detail = format!(
                        "enrolled as {} by gateway key {}; it accepts {} gateway key(s)",
                        enrollment.host,
                        cx.client_text(),
                        enrollment.gateway_pins.len()
                    );
                    let _ = done.try_send(Ok(enrollment));
                    (Ended::Enrolled, detail)
                }
                Err((ended, why, fatal)) => {
                    if fatal {
                        let _ = done.try_send(Err(why.clone()));
                    }
                    (ended, why)
                }
            }
        }
        (Mode::Enrolling { token, .. }, _) => {
            let why = format!("this agent is not enrolled yet (it waits for token {}); enroll it first with the command `virtgate enroll` printed", token.id);
            let _ = refuse(&mut tls, &why).await;
            (
                Ended::Refused,
                format!("refused a {} connection: {why}", hello.purpose.as_str()),
            )
        }
        (Mode::Serving { enrollment }, Purpose::Enroll) => {
            // A broker looking for an agent that waits for a token: not this one.
            let host = enrollment.lock().expect("enrollment lock").host.clone();
            let why = format!("the agent on {host} is enrolled already; to enroll it again, run the `virtgate agent --enroll …` command of a new token on the host");
            let _ = refuse(&mut tls, &why).await;
            (
                Ended::Abandoned,
                format!("a broker offered token {}: {why}", hello.token_id),
            )
        }
        (Mode::Serving { enrollment }, Purpose::Relay | Purpose::Rotate) => {
            cx.serving(tls, &hello, enrollment, shutdown).await
        }
    }
}

/// What one connection knows after TLS.
struct Cx<'a> {
    service: &'a Service,
    peer: SocketAddr,
    client: Option<Pin>,
    binding: Binding,
    deadline: Instant,
}

/// A failed enrollment attempt: how it ended, why, and whether the enrollment is over.
type EnrollFailure = (Ended, String, bool);

impl Cx<'_> {
    fn client_text(&self) -> String {
        self.client
            .map_or_else(|| "(none)".into(), |p| format!("sha256:{p}"))
    }

    /// The gateway's or broker's proof, then relay or rotation.
    async fn serving(
        &self,
        mut tls: Tls,
        hello: &Hello,
        enrollment: &std::sync::Mutex<Enrollment>,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let (record, current, host) = {
            let e = enrollment.lock().expect("enrollment lock");
            (
                e.record(hello.generation, now_unix()),
                e.current_generation(),
                e.host.clone(),
            )
        };
        let Some(record) = record else {
            let why = format!("the gateway proves secret generation {} but the agent on {host} accepts generation {current}: the gateway's secret for {host} is out of date (update its proxy.agent_secret_dir, or run `virtgate enroll --rotate {host}` again)", hello.generation);
            let _ = refuse(&mut tls, &why).await;
            return (Ended::Refused, why);
        };
        if let Err(outcome) = self.check(&mut tls, hello, &record).await {
            return outcome;
        }
        match hello.purpose {
            Purpose::Relay => self.relay(tls, &host, shutdown).await,
            _ => self.rotate(tls, enrollment, current).await,
        }
    }

    /// The PAKE check; counted, timed, and rate-limited per source on failure.
    async fn check(&self, tls: &mut Tls, hello: &Hello, record: &Record) -> Result<(), Outcome> {
        let metrics = &self.service.metrics;
        let started = Instant::now();
        let keys = &self.service.keys;
        let checked = timeout_at(
            self.deadline,
            check(tls, hello, keys, Some(record), &self.binding),
        )
        .await;
        metrics
            .check_duration
            .observe(started.elapsed().as_secs_f64());
        let failed = |why: String| {
            metrics.checks.with_label_values(&["failed"]).inc();
            self.service.limiter.failed(self.peer.ip());
            (Ended::CheckFailed, why)
        };
        match checked {
            Ok(Ok(())) => {
                metrics.checks.with_label_values(&["ok"]).inc();
                Ok(())
            }
            Ok(Err(e @ (PakeError::ProofFailed | PakeError::Refused(_)))) => Err(failed(format!(
                "the {} check of gateway key {} failed: {e}",
                hello.purpose.as_str(),
                self.client_text()
            ))),
            Ok(Err(e)) => Err((Ended::ProtocolError, format!("during the check: {e}"))),
            Err(_) => Err((
                Ended::ProtocolError,
                "the check did not finish within agent.handshake_timeout".into(),
            )),
        }
    }

    /// Connects to libvirt, tells the gateway it passed, sends libvirt's TLS confirmation byte
    /// and relays both ways.
    async fn relay(&self, mut tls: Tls, host: &str, shutdown: &CancellationToken) -> Outcome {
        let path = crate::server::socket_path(self.service);
        let unix = match timeout_at(self.deadline, UnixStream::connect(path)).await {
            Ok(Ok(unix)) => unix,
            failed => {
                let e = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".into(),
                };
                let why = format!("the agent on {host} cannot reach libvirt at {}: {e}; is libvirtd (or virtqemud) running?", path.display());
                let _ = refuse(&mut tls, &why).await;
                return (Ended::LibvirtUnreachable, why);
            }
        };
        let confirmed = async {
            accept(&mut tls).await.map_err(|e| e.to_string())?;
            // What a TLS libvirtd sends once the session is up: the gateway reads it on every
            // host alike, so its relay path stays one.
            tls.write_all(&[1]).await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())
        };
        if let Err(e) = confirmed.await {
            return (Ended::ProtocolError, format!("after the check: {e}"));
        }
        relay(
            tls,
            unix,
            self.service.config.idle_timeout,
            shutdown,
            &self.client_text(),
        )
        .await
    }

    /// After a proven rotate hello: registers the next secret and the gateway keys it names.
    async fn rotate(
        &self,
        mut tls: Tls,
        enrollment: &std::sync::Mutex<Enrollment>,
        current: u32,
    ) -> Outcome {
        let answered = async {
            accept(&mut tls).await?;
            answer_registration(&mut tls, &self.service.keys).await
        };
        let (settings, record) = match timeout_at(self.deadline, answered).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return (Ended::ProtocolError, format!("rotation: {e}")),
            Err(_) => return (Ended::ProtocolError, "rotation timed out".into()),
        };
        if let Err(why) = usable(&settings, current) {
            let _ = refuse(&mut tls, &why).await;
            return (Ended::Refused, why);
        }
        let stored = {
            let mut e = enrollment.lock().expect("enrollment lock");
            let mut next = e.clone();
            next.rotate(settings.generation, &record, now_unix());
            next.gateway_pins = pins_of(&settings);
            let saved = self.service.state.save_enrollment(&next);
            if saved.is_ok() {
                *e = next;
            }
            saved
        };
        if let Err(e) = stored {
            let why = format!("the agent could not store the new secret record: {e}");
            let _ = refuse(&mut tls, &why).await;
            return (Ended::ProtocolError, why);
        }
        self.service.pins.replace(pins_of(&settings));
        let metrics = &self.service.metrics;
        metrics.generation.set(i64::from(settings.generation));
        let _ = accept(&mut tls).await;
        (
            Ended::Rotated,
            format!(
                "rotated to secret generation {} by gateway key {}; {} gateway key(s) accepted now",
                settings.generation,
                self.client_text(),
                settings.gateway_pins.len()
            ),
        )
    }

    /// The enrollment exchange: the agent proves the token, the broker proves it holds the
    /// token's record, then it registers the first per-host secret and the gateway keys.
    async fn enroll(
        &self,
        tls: &mut Tls,
        hello: &Hello,
        token: &Token,
    ) -> Result<Enrollment, EnrollFailure> {
        if hello.token_id != token.id {
            let why = format!("this agent waits for token {}, not {}: run, on the host, the command `virtgate enroll` printed for it", token.id, hello.token_id);
            let _ = refuse(tls, &why).await;
            return Err((Ended::Refused, why, false));
        }
        let exchange = async {
            prove_token(tls, token, &self.binding).await?;
            answer_registration(tls, &self.service.keys).await
        };
        let (settings, record) = match timeout_at(self.deadline, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(PakeError::ProofFailed)) => {
                let why = format!("the broker (key {}) could not prove it issued token {}: the token given to this agent is not that broker's — paste the command `virtgate enroll` printed again, whole", self.client_text(), token.id);
                return Err((Ended::CheckFailed, why, true));
            }
            Ok(Err(PakeError::Refused(why))) => {
                return Err((Ended::Refused, format!("the broker refused: {why}"), true));
            }
            Ok(Err(e)) => return Err((Ended::ProtocolError, format!("enrollment: {e}"), false)),
            Err(_) => return Err((Ended::ProtocolError, "enrollment timed out".into(), false)),
        };
        if let Err(why) = usable(&settings, 0) {
            let _ = refuse(tls, &why).await;
            return Err((Ended::Refused, why, true));
        }
        let mut enrollment = Enrollment {
            host: settings.host.clone(),
            gateway_pins: pins_of(&settings),
            secrets: Vec::new(),
            enrolled_at: now_unix(),
        };
        enrollment.rotate(settings.generation, &record, now_unix());
        if let Err(e) = self.service.state.save_enrollment(&enrollment) {
            let why = format!("the agent could not store its enrollment: {e}");
            let _ = refuse(tls, &why).await;
            return Err((Ended::ProtocolError, why, true));
        }
        let _ = accept(tls).await;
        let _ = tls.shutdown().await;
        Ok(enrollment)
    }
}

/// Whether the broker's settings can be taken: a host name, at least one gateway key, a
/// generation newer than `current`.
fn usable(settings: &Settings, current: u32) -> Result<(), String> {
    if settings.host.is_empty() {
        return Err("the broker named no host".into());
    }
    if settings.gateway_pins.is_empty() {
        return Err("the broker named no gateway key: the agent would accept nobody".into());
    }
    if settings.generation <= current {
        return Err(format!(
            "secret generation {} is not newer than the agent's {current}",
            settings.generation
        ));
    }
    Ok(())
}

fn pins_of(settings: &Settings) -> Vec<Pin> {
    settings
        .gateway_pins
        .iter()
        .map(|p| Pin::from_bytes(*p))
        .collect()
}

/// Why a TLS handshake failed; a key that is not a pinned gateway key is named.
fn describe_tls_error(e: &std::io::Error) -> String {
    let unknown = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|tls| match tls {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o)) => {
                o.0.downcast_ref::<UnknownGateway>()
            }
            _ => None,
        });
    match unknown {
        Some(u) => format!("refused before any PAKE message: {u}"),
        None => format!("TLS handshake failed: {e}"),
    }
}

/// Relays both ways until either side closes, the connection is idle for `idle`, or the agent
/// stops. Large buffers keep the system calls few; TLS needs the bytes in user space anyway.
async fn relay(
    tls: Tls,
    unix: UnixStream,
    idle: Duration,
    shutdown: &CancellationToken,
    gateway: &str,
) -> Outcome {
    let epoch = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut a = Watched {
        inner: tls,
        last: last.clone(),
        epoch,
    };
    let mut b = Watched {
        inner: unix,
        last: last.clone(),
        epoch,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, 64 * 1024, 64 * 1024);
    let idle_watch = async {
        loop {
            let due = epoch + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    };
    tokio::select! {
        copied = copy => match copied {
            Ok((up, down)) => (Ended::Relayed, format!("relayed for gateway key {gateway}: {up} bytes to libvirt, {down} to the gateway")),
            Err(e) => (Ended::Relayed, format!("relay for gateway key {gateway} ended: {e}")),
        },
        () = idle_watch => (Ended::IdleTimeout, format!("no byte either way for {idle:?}")),
        () = shutdown.cancelled() => (Ended::Relayed, "the agent is stopping".into()),
    }
}

/// A stream that notes when it last read a byte.
struct Watched<S> {
    inner: S,
    last: Arc<AtomicU64>,
    epoch: Instant,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: StdPin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = StdPin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let ms = self.epoch.elapsed().as_millis() as u64;
            self.last.store(ms, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: StdPin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        StdPin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: StdPin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        StdPin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: StdPin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        StdPin::new(&mut self.inner).poll_shutdown(cx)
    }
}
