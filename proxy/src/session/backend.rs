//! Step 4: reaching the host. TCP to every address (happy eyeballs), TLS with the gateway's own
//! certificate checking the host's pin (or CA), the confirmation byte, then the host's own
//! handshake: AUTH_LIST (and, for a host that demands SASL, the gateway's own login:
//! [`super::host_login`]), keepalive if the client asked for it, and the client's CONNECT_OPEN
//! with the name the host should open and the read-only bit for `ro` identities.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use virtgate_rpc::remote::{
    AuthListReply, AuthType, ConnectOpenArgs, SupportsFeatureArgs, FEATURE_PROGRAM_KEEPALIVE,
    OPEN_FLAG_READ_ONLY, PROC_AUTH_LIST, PROC_CONNECT_SUPPORTS_FEATURE,
};
use virtgate_rpc::{
    call, packet, pong, ErrorDomain, ErrorNumber, Header, MessageType, Packet, PacketStream,
    Program, Reader, Status, Xdr, KEEPALIVE_PING, MAX_LEN,
};

use super::admit::Admitted;
use super::outcome::{ConnectionResult, Refusal};
use super::preopen::OpenRequest;
use crate::policy::Mode;
use crate::tls::{PinMismatch, TlsMaterial};

pub(crate) type Backend = TlsStream<TcpStream>;

/// The host, connected, with the client's CONNECT_OPEN forwarded and answered.
pub(crate) struct Opened<S> {
    pub host: PacketStream<S>,
    /// The host's reply to CONNECT_OPEN, for the client.
    pub reply: Vec<u8>,
}

/// Reaches the admitted host; refusals carry the message the client prints. A host that presents
/// a key other than its pin is also reported through `key_mismatch`.
pub(crate) async fn connect(
    material: &TlsMaterial,
    admitted: &Admitted,
    budget: Duration,
    key_mismatch: impl FnOnce(),
    check: Option<&super::secondary::Check>,
) -> Result<Backend, Refusal> {
    let host = &admitted.host;
    let mut target = admitted.target.clone();
    if target.addresses.is_empty() {
        let lookup = tokio::net::lookup_host((target.name.as_str(), target.port));
        target.addresses = tokio::time::timeout(budget, lookup)
            .await
            .ok()
            .and_then(Result::ok)
            .map(|a| a.map(|s| s.ip()).collect())
            .unwrap_or_default();
    }
    let unreachable = |why: String| {
        Refusal::no_connect(
            ConnectionResult::BackendUnreachable,
            format!("virtgate: cannot reach host {host}: {why}"),
            why,
        )
    };
    let rejected = |why: String| {
        Refusal::no_connect(
            ConnectionResult::BackendRejected,
            format!("virtgate: cannot reach host {host}: {why}"),
            why,
        )
    };
    let deadline = Instant::now() + budget;
    let tcp = tokio::time::timeout(budget, happy_eyeballs(&target.addresses, target.port))
        .await
        .map_err(|_| unreachable(format!("no address answered within {budget:?}")))?
        .map_err(unreachable)?;
    let _ = tcp.set_nodelay(true);
    let config = material
        .backend_config(admitted.pin, admitted.allow_ca)
        .map_err(|e| rejected(e.to_string()))?;
    let server_name = server_name(&target.name, &tcp);
    let handshake = TlsConnector::from(config).connect(server_name, tcp);
    let mut tls = match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            if pin_mismatch(&e).is_some() {
                key_mismatch();
            }
            return Err(rejected(describe_handshake_error(&e, host)));
        }
        Err(_) => return Err(unreachable(format!("no TLS handshake within {budget:?}"))),
    };
    if let Some(check) = check {
        check.run(&mut tls, deadline).await?;
    }
    let mut byte = [0u8; 1];
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(500));
    match tokio::time::timeout(left, tls.read_exact(&mut byte)).await {
        Ok(Ok(_)) if byte[0] == 1 => Ok(tls),
        Ok(_) => Err(rejected("it refused the gateway's client certificate (the host must trust the CA that signs the gateway's backend identity — its backend CA — and allow its DN in tls_allowed_dn_list; docs/pki.md)".into())),
        Err(_) => Err(unreachable("it did not confirm the TLS session in time".into())),
    }
}

/// The name the host's certificate is checked against: the host's name, or its address.
fn server_name(name: &str, tcp: &TcpStream) -> ServerName<'static> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return ServerName::IpAddress(ip.into());
    }
    ServerName::try_from(name.to_string()).unwrap_or_else(|_| {
        let ip = tcp
            .peer_addr()
            .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        ServerName::IpAddress(ip.into())
    })
}

/// Why the host's TLS handshake failed, told apart by error type: the host presenting another
/// key than its pin is the one an operator must review.
fn describe_handshake_error(e: &std::io::Error, host: &str) -> String {
    match pin_mismatch(e) {
        Some(m) => format!("it presented a key that is not its approved pin ({m}); refusing — the broker probes it now: `virtgate hosts show {host}` shows both keys, `virtgate hosts approve {host}` approves the new one if the change is legitimate"),
        None => format!("TLS handshake failed: {e}"),
    }
}

/// The pin mismatch inside a failed handshake, if that is why it failed.
fn pin_mismatch(e: &std::io::Error) -> Option<&PinMismatch> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|tls| match tls {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
                other.0.downcast_ref::<PinMismatch>()
            }
            _ => None,
        })
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

/// The host's own handshake, each exchange within `limit`: AUTH_LIST (a SASL login with
/// `side`'s credentials when the host demands one), keepalive if the client asked for it, then
/// the client's CONNECT_OPEN as the host should see it.
pub(crate) async fn open<S: AsyncRead + AsyncWrite + Unpin>(
    backend: S,
    admitted: &Admitted,
    open: &OpenRequest,
    limit: Duration,
    side: Option<super::host_login::HostSide<'_>>,
) -> Result<Opened<S>, Refusal> {
    let host = &admitted.host;
    let mut backend = PacketStream::new(backend);
    let rejected = |message: String, detail: &str| {
        Refusal::no_connect(ConnectionResult::BackendRejected, message, detail)
    };
    let auth = bounded(limit, call_host(&mut backend, PROC_AUTH_LIST, 0, &[])).await;
    let types = match auth {
        Some(Ok((header, payload))) if header.status == Status::Ok => {
            AuthListReply::decode(&mut Reader::new(&payload)).map_or_else(|_| Vec::new(), |r| r.0)
        }
        _ => {
            let message = format!("virtgate: host {host} did not answer the gateway's AUTH_LIST");
            return Err(rejected(message, "AUTH_LIST failed"));
        }
    };
    if types.contains(&AuthType::Sasl) && !types.contains(&AuthType::None) {
        super::host_login::log_in(&mut backend, host, side, limit).await?;
    } else if !types.is_empty() && !types.contains(&AuthType::None) {
        return Err(Refusal {
            result: ConnectionResult::BackendRejected,
            code: ErrorNumber::AUTH_UNAVAILABLE,
            domain: ErrorDomain::FROM_REMOTE,
            message: format!("virtgate: host {host} requires polkit authentication from the gateway, which it cannot do; set auth_tls = \"none\" (with a tls_allowed_dn_list) or \"sasl\" on the host"),
            detail: format!("host offers auth types {types:?}"),
        });
    }
    if open.wants_keepalive {
        let args = SupportsFeatureArgs {
            feature: FEATURE_PROGRAM_KEEPALIVE,
        };
        let payload = args.to_xdr();
        let feature = call_host(&mut backend, PROC_CONNECT_SUPPORTS_FEATURE, 1, &payload);
        if !matches!(bounded(limit, feature).await, Some(Ok(_))) {
            let message = format!("virtgate: host {host} closed the connection");
            return Err(rejected(message, "keepalive negotiation failed"));
        }
    }
    let flags = match admitted.mode {
        Mode::Ro => open.args.flags | OPEN_FLAG_READ_ONLY,
        Mode::Rw => open.args.flags,
    };
    let forwarded = ConnectOpenArgs {
        name: Some(admitted.forwarded.clone()),
        flags,
    };
    let reply = bounded(limit, forward_open(&mut backend, open.header, &forwarded)).await;
    match reply {
        Some(Ok(reply)) => Ok(Opened {
            host: backend,
            reply,
        }),
        _ => {
            let message = format!("virtgate: host {host} did not answer CONNECT_OPEN");
            Err(rejected(message, "no CONNECT_OPEN reply"))
        }
    }
}

async fn bounded<T>(limit: Duration, f: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(limit, f).await.ok()
}

/// Why a call of the gateway's own to the host got no reply.
#[derive(Debug)]
pub(crate) enum HostCallError {
    Io,
    Closed,
}

/// One call of the gateway's own to the host; answers the host's PINGs meanwhile.
pub(crate) async fn call_host<S: AsyncRead + AsyncWrite + Unpin>(
    backend: &mut PacketStream<S>,
    procedure: u32,
    serial: u32,
    payload: &[u8],
) -> Result<(Header, Vec<u8>), HostCallError> {
    let request = call(Program::Remote, procedure, serial, payload);
    backend
        .write_packet(&request)
        .await
        .map_err(|_| HostCallError::Io)?;
    loop {
        let packet = next_from_host(backend).await?;
        let h = packet.0;
        if h.kind == MessageType::Reply && h.serial == serial && h.procedure == procedure {
            return Ok(packet);
        }
    }
}

/// Sends the client's CONNECT_OPEN (its header, the forwarded arguments) and returns the host's
/// reply, whole.
async fn forward_open<S: AsyncRead + AsyncWrite + Unpin>(
    backend: &mut PacketStream<S>,
    header: Header,
    args: &ConnectOpenArgs,
) -> Result<Vec<u8>, HostCallError> {
    let request = packet(header, &args.to_xdr());
    backend
        .write_packet(&request)
        .await
        .map_err(|_| HostCallError::Io)?;
    let (h, payload) = next_from_host(backend).await?;
    Ok(packet(h, &payload))
}

/// The host's next packet other than keepalive (PINGs are answered).
async fn next_from_host<S: AsyncRead + AsyncWrite + Unpin>(
    backend: &mut PacketStream<S>,
) -> Result<(Header, Vec<u8>), HostCallError> {
    loop {
        let bytes = match backend.read_packet(MAX_LEN).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Err(HostCallError::Closed),
            Err(_) => return Err(HostCallError::Io),
        };
        let Ok(p) = Packet::parse(bytes) else {
            return Err(HostCallError::Io);
        };
        let (h, payload) = (p.header, p.payload.to_vec());
        if h.program == Program::Keepalive {
            if h.procedure == KEEPALIVE_PING {
                backend
                    .write_packet(&pong())
                    .await
                    .map_err(|_| HostCallError::Io)?;
            }
            continue;
        }
        return Ok((h, payload));
    }
}
