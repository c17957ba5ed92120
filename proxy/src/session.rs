//! One client connection, from TLS accept to close.
//!
//! 1. TLS handshake (client certificate required), DN allow-list, then the `0x01` byte.
//! 2. Until CONNECT_OPEN the gateway answers the client itself: AUTH_LIST (`none`: the certificate
//!    authenticated the client), CONNECT_SUPPORTS_FEATURE(10) and keepalive PINGs. No host is
//!    contacted before the client is authenticated and authorised for that host.
//! 3. CONNECT_OPEN names the host (`qemu://h1/system`); policy decides rw/ro; the host must be
//!    trusted in the inventory; the gateway connects with its own certificate, checks the host's
//!    key, runs AUTH_LIST, replays SUPPORTS_FEATURE(10) if the client asked for keepalive, and
//!    forwards CONNECT_OPEN (`qemu:///system`, read-only bit set for `ro`) with the client's serial.
//! 4. Frames are relayed both ways ([`crate::relay`]).
//!
//! Every refusal after step 1 is a libvirt error REPLY the client prints.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{info, warn};

use crate::config::ProxyConfig;
use crate::directory::{Admission, HostTableWatch, HostTarget, RefuseReason};
use crate::frame::{self, err, xdr, FrameError, Header};
use crate::metrics::ProxyMetrics;
use crate::policy::{DnAllowList, Mode, Policy};
use crate::relay::{relay, RelayEnd};
use crate::tls::{cn_of, subject_dn, TlsMaterial};

/// Largest packet accepted before CONNECT_OPEN: the pre-open calls are tiny.
const PREOPEN_MAX_LEN: u32 = 64 * 1024;

pub(crate) struct Shared {
    pub config: ProxyConfig,
    pub policy: Policy,
    pub allowed_dn: DnAllowList,
    pub hosts: HostTableWatch,
    pub tls: watch::Receiver<Arc<TlsMaterial>>,
    pub metrics: ProxyMetrics,
}

/// What one log line says about a connection.
struct Outcome {
    result: &'static str,
    identity: Option<String>,
    host: Option<String>,
    mode: Option<Mode>,
    detail: String,
    calls: u64,
    to_host: u64,
    to_client: u64,
}

impl Outcome {
    fn end(&mut self, result: &'static str, detail: impl Into<String>) -> &'static str {
        self.result = result;
        self.detail = detail.into();
        result
    }
}

struct ActiveGuard(prometheus::IntGauge);
impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub(crate) async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    bound_host: Option<String>,
    shutdown: watch::Receiver<bool>,
) {
    let started = Instant::now();
    shared.metrics.connections_active.inc();
    let _active = ActiveGuard(shared.metrics.connections_active.clone());
    let mut outcome = Outcome {
        result: "closed",
        identity: None,
        host: None,
        mode: None,
        detail: String::new(),
        calls: 0,
        to_host: 0,
        to_client: 0,
    };
    let result = session(&shared, tcp, bound_host, shutdown, &mut outcome).await;
    shared
        .metrics
        .connections_total
        .with_label_values(&[result])
        .inc();
    let took_ms = started.elapsed().as_secs_f64() * 1000.0;
    let identity = outcome.identity.as_deref().unwrap_or("-");
    let host = outcome.host.as_deref().unwrap_or("-");
    let mode = outcome
        .mode
        .map(|m| if m == Mode::Ro { "ro" } else { "rw" })
        .unwrap_or("-");
    let quiet = matches!(result, "closed" | "idle_timeout");
    if quiet {
        info!(%peer, identity, host, mode, result, took_ms, calls = outcome.calls, to_host = outcome.to_host, to_client = outcome.to_client, "connection {}", outcome.detail);
    } else {
        warn!(%peer, identity, host, mode, result, took_ms, calls = outcome.calls, to_host = outcome.to_host, to_client = outcome.to_client, "connection refused or failed: {}", outcome.detail);
    }
}

enum ReadFrame {
    Frame,
    Eof,
}

#[derive(Debug)]
enum ReadError {
    Io(std::io::Error),
    Frame(FrameError),
    TooLarge(u32),
}

/// Reads one whole packet into `buf` (cleared first).
async fn read_frame<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    max: u32,
) -> Result<ReadFrame, ReadError> {
    buf.clear();
    buf.resize(4, 0);
    match s.read_exact(&mut buf[..4]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(ReadFrame::Eof),
        Err(e) => return Err(ReadError::Io(e)),
    }
    let len = frame::declared_len(buf)
        .expect("4 bytes read")
        .map_err(ReadError::Frame)?;
    if len > max {
        return Err(ReadError::TooLarge(len));
    }
    buf.resize(len as usize, 0);
    s.read_exact(&mut buf[4..]).await.map_err(ReadError::Io)?;
    Ok(ReadFrame::Frame)
}

async fn send<S: AsyncWrite + Unpin>(s: &mut S, packet: &[u8]) -> std::io::Result<()> {
    s.write_all(packet).await?;
    s.flush().await
}

/// Sends an error reply and closes the client's side cleanly.
async fn refuse<S: AsyncWrite + Unpin>(
    client: &mut S,
    call: &Header,
    code: i32,
    domain: i32,
    message: &str,
) {
    // Bounded: a client that stopped reading gets no more of the gateway's time.
    let reply = frame::error_reply(call, code, domain, message);
    let _ = tokio::time::timeout(Duration::from_secs(5), send(client, &reply)).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), client.shutdown()).await;
}

/// Refuses the client's CONNECT_OPEN with a "no connection" error that names the problem (the
/// client prints it), and records the outcome.
async fn refuse_open<S: AsyncWrite + Unpin>(
    client: &mut S,
    open: &Header,
    out: &mut Outcome,
    result: &'static str,
    message: impl AsRef<str>,
    detail: impl Into<String>,
) -> &'static str {
    refuse(
        client,
        open,
        err::NO_CONNECT,
        err::FROM_REMOTE,
        message.as_ref(),
    )
    .await;
    out.end(result, detail)
}

async fn session(
    shared: &Shared,
    tcp: TcpStream,
    bound_host: Option<String>,
    shutdown: watch::Receiver<bool>,
    out: &mut Outcome,
) -> &'static str {
    let m = &shared.metrics;
    let cfg = &shared.config;
    let _ = tcp.set_nodelay(true);
    let material = shared.tls.borrow().clone();
    let handshake_started = Instant::now();
    let mut client = match tokio::time::timeout(
        cfg.handshake_timeout,
        TlsAcceptor::from(material.server.clone()).accept(tcp),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = classify_tls_error(&e);
            m.auth_failures.with_label_values(&["tls", reason]).inc();
            return out.end("tls_failed", format!("TLS handshake failed: {e}"));
        }
        Err(_) => {
            m.auth_failures.with_label_values(&["tls", "timeout"]).inc();
            return out.end(
                "tls_failed",
                format!("no TLS handshake within {:?}", cfg.handshake_timeout),
            );
        }
    };
    m.handshake_duration
        .observe(handshake_started.elapsed().as_secs_f64());
    let Some(dn) = client
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(subject_dn)
    else {
        m.auth_failures
            .with_label_values(&["tls", "no_certificate"])
            .inc();
        return out.end("tls_failed", "no usable client certificate");
    };
    out.identity = Some(dn.clone());
    if !shared.allowed_dn.allows(&dn) {
        m.auth_failures
            .with_label_values(&["dn", "not_allowed"])
            .inc();
        let _ = client.shutdown().await;
        return out.end("dn_not_allowed", "subject DN not in proxy.allowed_dn");
    }
    if send(&mut client, &[1]).await.is_err() {
        return out.end("closed", "client left after the handshake");
    }

    // Pre-open: the gateway answers by itself.
    let mut buf = Vec::with_capacity(4096);
    let mut wants_keepalive = false;
    // One budget for the whole pre-open exchange: trickled PINGs cannot hold a slot forever.
    let preopen_deadline = tokio::time::Instant::now() + cfg.handshake_timeout;
    let (open_header, name, flags) = loop {
        let read = tokio::time::timeout_at(
            preopen_deadline,
            read_frame(&mut client, &mut buf, PREOPEN_MAX_LEN),
        )
        .await;
        match read {
            Err(_) => return out.end("closed", "client sent no CONNECT_OPEN in time"),
            Ok(Ok(ReadFrame::Eof)) => {
                return out.end("closed", "client closed before CONNECT_OPEN")
            }
            Ok(Err(e)) => return protocol_error(m, out, "client", e),
            Ok(Ok(ReadFrame::Frame)) => {}
        }
        let h = Header::parse(&buf);
        let payload = &buf[frame::HEADER_LEN..];
        let reply = match (h.program, h.kind, h.procedure) {
            (frame::PROGRAM_KEEPALIVE, frame::TYPE_MESSAGE, frame::KEEPALIVE_PING) => Some(frame::pong()),
            (frame::PROGRAM_REMOTE, frame::TYPE_CALL, frame::PROC_AUTH_LIST) => {
                let mut p = Vec::new();
                xdr::u32(&mut p, 1);
                xdr::u32(&mut p, frame::AUTH_NONE);
                Some(frame::packet(h.reply(frame::STATUS_OK), &p))
            }
            (frame::PROGRAM_REMOTE, frame::TYPE_CALL, frame::PROC_CONNECT_SUPPORTS_FEATURE) => {
                let feature = xdr::Reader::new(payload).u32().unwrap_or(0);
                if feature == frame::FEATURE_PROGRAM_KEEPALIVE {
                    wants_keepalive = true;
                    let mut p = Vec::new();
                    xdr::u32(&mut p, 1);
                    Some(frame::packet(h.reply(frame::STATUS_OK), &p))
                } else {
                    Some(frame::error_reply(&h, err::INTERNAL_ERROR, err::FROM_RPC, "internal error: hypervisor connection not open"))
                }
            }
            (
                frame::PROGRAM_REMOTE,
                frame::TYPE_CALL,
                frame::PROC_AUTH_SASL_INIT | frame::PROC_AUTH_SASL_START | frame::PROC_AUTH_SASL_STEP | frame::PROC_AUTH_POLKIT,
            ) => Some(frame::error_reply(
                &h,
                err::AUTH_UNAVAILABLE,
                err::FROM_RPC,
                "virtgate: the gateway authenticated you by your TLS certificate; no SASL or polkit step is needed (drop auth= from the URI)",
            )),
            (frame::PROGRAM_REMOTE, frame::TYPE_CALL, frame::PROC_CONNECT_OPEN) => {
                let mut r = xdr::Reader::new(payload);
                match (r.opt_string(), r.u32()) {
                    (Some(name), Some(flags)) => break (h, name.map(str::to_string), flags),
                    _ => {
                        m.protocol_errors.with_label_values(&["client", "bad_connect_open"]).inc();
                        refuse(&mut client, &h, err::RPC, err::FROM_RPC, "virtgate: malformed CONNECT_OPEN").await;
                        return out.end("protocol_error", "malformed CONNECT_OPEN");
                    }
                }
            }
            (_, frame::TYPE_CALL, _) => Some(frame::error_reply(
                &h,
                err::INTERNAL_ERROR,
                err::FROM_RPC,
                "internal error: hypervisor connection not open",
            )),
            // Like libvirtd: anything else before CONNECT_OPEN is dropped without an answer.
            _ => None,
        };
        if let Some(reply) = reply {
            // Within the same budget: a client that sends but never reads cannot hold this.
            match tokio::time::timeout_at(preopen_deadline, send(&mut client, &reply)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return out.end("closed", "client left during the pre-open exchange"),
                Err(_) => return out.end("closed", "client stopped reading before CONNECT_OPEN"),
            }
        }
    };

    // Routing.
    let name = name.unwrap_or_default();
    let route = crate::route::route(&name);
    let (host, forwarded) = match (&bound_host, &route.host) {
        (Some(bound), _) => (
            bound.clone(),
            if route.host.is_some() {
                route.forwarded.clone()
            } else {
                name.clone()
            },
        ),
        (None, Some(h)) => (h.clone(), route.forwarded.clone()),
        (None, None) if !cfg.default_host.is_empty() => {
            (cfg.default_host.to_ascii_lowercase(), name.clone())
        }
        (None, None) => {
            return refuse_open(
                &mut client,
                &open_header,
                out,
                "no_host",
                "virtgate: the connection URI names no host; add ?name=DRIVER://HOST/PATH, e.g. qemu+tls://GATEWAY/system?name=qemu://HOST/system",
                format!("CONNECT_OPEN name {name:?} names no host and proxy.default_host is empty"),
            )
            .await;
        }
    };
    out.host = Some(host.clone());

    // Policy.
    let Some(mode) = shared.policy.decide(&dn, &host) else {
        m.auth_failures
            .with_label_values(&["policy", "denied"])
            .inc();
        let message = format!("virtgate: access to host {host} denied for {}", cn_of(&dn));
        refuse(
            &mut client,
            &open_header,
            err::ACCESS_DENIED,
            err::FROM_ACCESS,
            &message,
        )
        .await;
        return out.end(
            "denied",
            "no proxy.rules entry allows this identity on this host",
        );
    };
    out.mode = Some(mode);

    // Inventory and trust.
    let Some(mut target) = shared.hosts.borrow().get(&host).cloned() else {
        let message = format!(
            "virtgate: unknown host {host}; `virtgate hosts` lists the hosts this gateway knows"
        );
        return refuse_open(
            &mut client,
            &open_header,
            out,
            "unknown_host",
            message,
            "not in the inventory",
        )
        .await;
    };
    let (pin, allow_ca) = match &target.admission {
        Admission::Connect { pin, allow_ca } => (*pin, *allow_ca),
        Admission::Refuse {
            reason,
            message,
            detail,
        } => {
            let result = match reason {
                RefuseReason::Unreachable => "backend_unreachable",
                RefuseReason::Untrusted => "untrusted_host",
            };
            let detail = detail.clone();
            return refuse_open(&mut client, &open_header, out, result, message, detail).await;
        }
    };
    if target.addresses.is_empty() {
        let lookup = tokio::net::lookup_host((target.name.as_str(), target.port));
        target.addresses = tokio::time::timeout(cfg.backend_connect_timeout, lookup)
            .await
            .ok()
            .and_then(Result::ok)
            .map(|a| a.map(|s| s.ip()).collect())
            .unwrap_or_default();
    }

    // The host.
    let connect_started = Instant::now();
    let mut backend = match connect_backend(
        &material,
        &target,
        pin,
        allow_ca,
        cfg.backend_connect_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err((result, why)) => {
            let message = format!("virtgate: cannot reach host {host}: {why}");
            return refuse_open(&mut client, &open_header, out, result, message, why).await;
        }
    };
    m.backend_connect_duration
        .observe(connect_started.elapsed().as_secs_f64());

    // The host's own handshake: AUTH_LIST, keepalive, then the client's CONNECT_OPEN.
    let mut bbuf = Vec::with_capacity(4096);
    let limit = cfg.backend_connect_timeout;
    match backend_call(
        &mut backend,
        &mut bbuf,
        frame::PROC_AUTH_LIST,
        0,
        &[],
        limit,
    )
    .await
    {
        Ok(reply) if reply.status == frame::STATUS_OK => {
            let mut r = xdr::Reader::new(&bbuf[frame::HEADER_LEN..]);
            let count = r.u32().unwrap_or(0);
            let types: Vec<u32> = (0..count.min(20)).filter_map(|_| r.u32()).collect();
            if !types.is_empty() && !types.contains(&frame::AUTH_NONE) {
                let message = format!(
                    "virtgate: host {host} requires SASL/polkit authentication from the gateway, which it cannot do yet; set auth_tls = \"none\" with a tls_allowed_dn_list on the host"
                );
                refuse(
                    &mut client,
                    &open_header,
                    err::AUTH_UNAVAILABLE,
                    err::FROM_REMOTE,
                    &message,
                )
                .await;
                return out.end(
                    "backend_rejected",
                    format!("host offers auth types {types:?}"),
                );
            }
        }
        Ok(_) | Err(_) => {
            let message = format!("virtgate: host {host} did not answer the gateway's AUTH_LIST");
            return refuse_open(
                &mut client,
                &open_header,
                out,
                "backend_rejected",
                message,
                "AUTH_LIST failed",
            )
            .await;
        }
    }
    if wants_keepalive {
        let mut p = Vec::new();
        xdr::u32(&mut p, frame::FEATURE_PROGRAM_KEEPALIVE);
        if backend_call(
            &mut backend,
            &mut bbuf,
            frame::PROC_CONNECT_SUPPORTS_FEATURE,
            1,
            &p,
            limit,
        )
        .await
        .is_err()
        {
            return refuse_open(
                &mut client,
                &open_header,
                out,
                "backend_rejected",
                format!("virtgate: host {host} closed the connection"),
                "keepalive negotiation failed",
            )
            .await;
        }
    }
    let mut open = Vec::new();
    xdr::opt_string(&mut open, Some(&forwarded));
    xdr::u32(
        &mut open,
        if mode == Mode::Ro {
            flags | frame::OPEN_FLAG_READ_ONLY
        } else {
            flags
        },
    );
    let open_packet = frame::packet(open_header, &open);
    let forwarded_open = async {
        send(&mut backend, &open_packet).await.ok()?;
        loop {
            match read_frame(&mut backend, &mut bbuf, frame::MAX_LEN).await {
                Ok(ReadFrame::Frame) => {
                    let h = Header::parse(&bbuf);
                    if h.program == frame::PROGRAM_KEEPALIVE && h.procedure == frame::KEEPALIVE_PING
                    {
                        send(&mut backend, &frame::pong()).await.ok()?;
                        continue;
                    }
                    return Some(h);
                }
                _ => return None,
            }
        }
    };
    let Some(_reply) = tokio::time::timeout(cfg.backend_connect_timeout, forwarded_open)
        .await
        .ok()
        .flatten()
    else {
        return refuse_open(
            &mut client,
            &open_header,
            out,
            "backend_rejected",
            format!("virtgate: host {host} did not answer CONNECT_OPEN"),
            "no CONNECT_OPEN reply",
        )
        .await;
    };
    if send(&mut client, &bbuf).await.is_err() {
        return out.end("closed", "client left during CONNECT_OPEN");
    }

    // Relay.
    let stats = relay(
        client,
        backend,
        &host,
        &shared.metrics,
        cfg.idle_timeout,
        cfg.write_timeout,
        shutdown,
    )
    .await;
    out.calls = stats.calls;
    out.to_host = stats.to_host;
    out.to_client = stats.to_client;
    match stats.end {
        RelayEnd::ClientClosed => out.end("closed", format!("forwarded {forwarded:?}")),
        RelayEnd::HostClosed { failed_calls } => out.end(
            "closed",
            if failed_calls > 0 {
                format!("host closed the connection with {failed_calls} call(s) in flight; the client got errors for them")
            } else {
                "host closed the connection".to_string()
            },
        ),
        RelayEnd::Idle => out.end("idle_timeout", format!("no packet for {:?}", cfg.idle_timeout)),
        RelayEnd::Shutdown => out.end("closed", "gateway shutting down"),
        RelayEnd::Protocol { side, reason } => {
            m.protocol_errors.with_label_values(&[side, reason]).inc();
            out.end("protocol_error", format!("{side} violated the framing: {reason}"))
        }
    }
}

fn protocol_error(
    m: &ProxyMetrics,
    out: &mut Outcome,
    side: &'static str,
    e: ReadError,
) -> &'static str {
    let reason = match &e {
        ReadError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => "truncated",
        ReadError::Io(_) => "io_error",
        ReadError::Frame(f) => f.reason(),
        ReadError::TooLarge(len) if *len > 0 => "too_large_before_open",
        ReadError::TooLarge(_) => "too_large_before_open",
    };
    m.protocol_errors.with_label_values(&[side, reason]).inc();
    out.end("protocol_error", format!("{side}: {e:?}"))
}

fn classify_tls_error(e: &std::io::Error) -> &'static str {
    let text = e.to_string();
    if text.contains("NoCertificatesPresented")
        || text.contains("no certificate")
        || text.contains("peer sent no certificates")
    {
        "no_certificate"
    } else if text.contains("UnknownIssuer")
        || text.contains("BadSignature")
        || text.contains("invalid peer certificate")
    {
        "bad_certificate"
    } else if text.contains("Revoked") {
        "revoked"
    } else if text.contains("Expired") {
        "expired"
    } else {
        "handshake_failed"
    }
}

/// One call of the gateway's own to the host, answered within `limit`.
async fn backend_call<S: AsyncRead + AsyncWrite + Unpin>(
    backend: &mut S,
    buf: &mut Vec<u8>,
    procedure: u32,
    serial: u32,
    payload: &[u8],
    limit: Duration,
) -> Result<Header, ReadError> {
    tokio::time::timeout(
        limit,
        backend_call_unbounded(backend, buf, procedure, serial, payload),
    )
    .await
    .unwrap_or_else(|_| Err(ReadError::Io(std::io::ErrorKind::TimedOut.into())))
}

async fn backend_call_unbounded<S: AsyncRead + AsyncWrite + Unpin>(
    backend: &mut S,
    buf: &mut Vec<u8>,
    procedure: u32,
    serial: u32,
    payload: &[u8],
) -> Result<Header, ReadError> {
    send(
        backend,
        &frame::call(frame::PROGRAM_REMOTE, procedure, serial, payload),
    )
    .await
    .map_err(ReadError::Io)?;
    loop {
        match read_frame(backend, buf, frame::MAX_LEN).await? {
            ReadFrame::Eof => return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into())),
            ReadFrame::Frame => {
                let h = Header::parse(buf);
                if h.program == frame::PROGRAM_KEEPALIVE {
                    if h.procedure == frame::KEEPALIVE_PING {
                        send(backend, &frame::pong()).await.map_err(ReadError::Io)?;
                    }
                    continue;
                }
                if h.kind == frame::TYPE_REPLY && h.serial == serial && h.procedure == procedure {
                    return Ok(h);
                }
            }
        }
    }
}

type Backend = tokio_rustls::client::TlsStream<TcpStream>;

/// Reaches the host: TCP to every address, IPv6 first and the next one 250 ms later (happy
/// eyeballs), TLS with the gateway's identity verifying the host's pin (or CA), then the
/// confirmation byte that says the host accepted the gateway's certificate.
async fn connect_backend(
    material: &TlsMaterial,
    target: &HostTarget,
    pin: Option<virtgate_pki::Pin>,
    allow_ca: bool,
    budget: Duration,
) -> Result<Backend, (&'static str, String)> {
    let deadline = Instant::now() + budget;
    let tcp = tokio::time::timeout(budget, happy_eyeballs(&target.addresses, target.port))
        .await
        .map_err(|_| {
            (
                "backend_unreachable",
                format!("no address answered within {budget:?}"),
            )
        })?
        .map_err(|e| ("backend_unreachable", e))?;
    let _ = tcp.set_nodelay(true);
    let config = material
        .backend_config(pin, allow_ca)
        .map_err(|e| ("backend_rejected", e.to_string()))?;
    let server_name = match target.name.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(target.name.clone()).unwrap_or(ServerName::IpAddress(
            tcp.peer_addr()
                .map(|a| a.ip())
                .unwrap_or(IpAddr::from([0, 0, 0, 0]))
                .into(),
        )),
    };
    let left = deadline.saturating_duration_since(Instant::now());
    let mut tls = match tokio::time::timeout(
        left,
        TlsConnector::from(config).connect(server_name, tcp),
    )
    .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let text = e.to_string();
            let why = if text.contains("approved pin") {
                format!("it presented a key that is not its approved pin ({text}); refusing — review with `virtgate hosts`")
            } else {
                format!("TLS handshake failed: {text}")
            };
            return Err(("backend_rejected", why));
        }
        Err(_) => {
            return Err((
                "backend_unreachable",
                format!("no TLS handshake within {budget:?}"),
            ))
        }
    };
    let mut byte = [0u8; 1];
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(500));
    match tokio::time::timeout(left, tls.read_exact(&mut byte)).await {
        Ok(Ok(_)) if byte[0] == 1 => Ok(tls),
        Ok(_) => Err((
            "backend_rejected",
            "it refused the gateway's client certificate (the host must trust the gateway's CA and allow its DN in tls_allowed_dn_list)".into(),
        )),
        Err(_) => Err(("backend_unreachable", "it did not confirm the TLS session in time".into())),
    }
}

async fn happy_eyeballs(addresses: &[IpAddr], port: u16) -> Result<TcpStream, String> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    if addresses.is_empty() {
        return Err("no address known for this host".into());
    }
    let (v6, v4): (Vec<IpAddr>, Vec<IpAddr>) = addresses.iter().partition(|a| a.is_ipv6());
    let mut ordered = Vec::with_capacity(addresses.len());
    let (mut a, mut b) = (v6.into_iter(), v4.into_iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => break,
            (x, y) => ordered.extend(x.into_iter().chain(y)),
        }
    }
    let mut attempts: FuturesUnordered<_> = ordered
        .into_iter()
        .enumerate()
        .map(|(i, ip)| async move {
            tokio::time::sleep(Duration::from_millis(250) * i as u32).await;
            let addr = SocketAddr::new(ip, port);
            (addr, TcpStream::connect(addr).await)
        })
        .collect();
    let mut errors = Vec::new();
    while let Some((addr, result)) = attempts.next().await {
        match result {
            Ok(s) => return Ok(s),
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    Err(errors.join("; "))
}
