//! Step 2: until CONNECT_OPEN the gateway answers the client itself — AUTH_LIST (`none`: the
//! certificate authenticated the client; `sasl` when `proxy.front_auth` wants a password, whose
//! login [`super::login`] runs), CONNECT_SUPPORTS_FEATURE(keepalive) and keepalive PINGs —
//! within one budget, in packets of at most 64 KiB. No host is contacted here.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use virtgate_rpc::remote::{
    AuthListReply, AuthType, ConnectOpenArgs, SupportsFeatureArgs, SupportsFeatureReply,
    FEATURE_PROGRAM_KEEPALIVE, PROC_AUTH_LIST, PROC_AUTH_POLKIT, PROC_AUTH_SASL_INIT,
    PROC_AUTH_SASL_START, PROC_AUTH_SASL_STEP, PROC_CONNECT_OPEN, PROC_CONNECT_SUPPORTS_FEATURE,
};
use virtgate_rpc::{
    error_reply, ok_reply, pong, ErrorDomain, ErrorNumber, Header, MessageType, Packet,
    PacketStream, Program, ReadError, Reader, Xdr, KEEPALIVE_PING,
};

use super::login::{Answer, FrontLogin};
use super::outcome::{ConnectionResult, Ended};
use crate::metrics::ProxyMetrics;

/// Largest packet accepted before CONNECT_OPEN: the pre-open calls are tiny.
pub(crate) const PREOPEN_MAX_LEN: u32 = 64 * 1024;

/// The client's CONNECT_OPEN, and what it asked for before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OpenRequest {
    pub header: Header,
    pub args: ConnectOpenArgs,
    /// The client enabled keepalive (SUPPORTS_FEATURE 10); the host is told the same.
    pub wants_keepalive: bool,
}

/// What the client sent before CONNECT_OPEN.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PreOpenCall {
    Ping,
    AuthList,
    SupportsFeature(u32),
    /// AUTH_SASL_INIT, START or STEP (the procedure).
    Sasl(u32),
    /// polkit.
    Authenticate,
    Open(ConnectOpenArgs),
    MalformedOpen,
    /// Any other call: libvirtd answers it "connection not open".
    OtherCall,
    /// Anything that is not a call (libvirtd drops it without an answer).
    Ignored,
}

impl PreOpenCall {
    fn parse(packet: &Packet<'_>) -> Self {
        let h = &packet.header;
        let mut payload = Reader::new(packet.payload);
        match (h.program, h.kind, h.procedure) {
            (Program::Keepalive, MessageType::Message, KEEPALIVE_PING) => Self::Ping,
            (Program::Remote, MessageType::Call, PROC_AUTH_LIST) => Self::AuthList,
            (Program::Remote, MessageType::Call, PROC_CONNECT_SUPPORTS_FEATURE) => {
                let feature = SupportsFeatureArgs::decode(&mut payload).map_or(0, |a| a.feature);
                Self::SupportsFeature(feature)
            }
            (
                Program::Remote,
                MessageType::Call,
                p @ (PROC_AUTH_SASL_INIT | PROC_AUTH_SASL_START | PROC_AUTH_SASL_STEP),
            ) => Self::Sasl(p),
            (Program::Remote, MessageType::Call, PROC_AUTH_POLKIT) => Self::Authenticate,
            (Program::Remote, MessageType::Call, PROC_CONNECT_OPEN) => {
                match ConnectOpenArgs::decode(&mut payload) {
                    Ok(args) => Self::Open(args),
                    Err(_) => Self::MalformedOpen,
                }
            }
            (_, MessageType::Call, _) => Self::OtherCall,
            _ => Self::Ignored,
        }
    }
}

const NOT_OPEN: &str = "internal error: hypervisor connection not open";
const NO_AUTH_STEP: &str = "virtgate: the gateway authenticated you by your TLS certificate; no SASL or polkit step is needed (drop auth= from the URI)";
const NO_POLKIT: &str = "virtgate: this gateway logs users in with SASL (SCRAM-SHA-256/512), not polkit; drop auth=polkit from the URI";

/// The gateway's own answer to a pre-open call other than a login step, if it answers at all.
fn answer(
    call: &PreOpenCall,
    h: &Header,
    wants_keepalive: &mut bool,
    password: bool,
) -> Option<Vec<u8>> {
    match call {
        PreOpenCall::Ping => Some(pong()),
        PreOpenCall::AuthList => {
            let kind = if password {
                AuthType::Sasl
            } else {
                AuthType::None
            };
            Some(ok_reply(h, &AuthListReply(vec![kind])))
        }
        PreOpenCall::Authenticate if password => Some(error_reply(
            h,
            ErrorNumber::AUTH_UNAVAILABLE,
            ErrorDomain::FROM_RPC,
            NO_POLKIT,
        )),
        PreOpenCall::SupportsFeature(FEATURE_PROGRAM_KEEPALIVE) => {
            *wants_keepalive = true;
            Some(ok_reply(h, &SupportsFeatureReply { supported: true }))
        }
        PreOpenCall::SupportsFeature(_) | PreOpenCall::OtherCall => Some(error_reply(
            h,
            ErrorNumber::INTERNAL_ERROR,
            ErrorDomain::FROM_RPC,
            NOT_OPEN,
        )),
        PreOpenCall::Authenticate | PreOpenCall::Sasl(_) => Some(error_reply(
            h,
            ErrorNumber::AUTH_UNAVAILABLE,
            ErrorDomain::FROM_RPC,
            NO_AUTH_STEP,
        )),
        PreOpenCall::Open(_) | PreOpenCall::MalformedOpen | PreOpenCall::Ignored => None,
    }
}

/// Answers the client until it sends CONNECT_OPEN, or until `deadline`; the client's
/// certificate authenticated it.
#[cfg(test)]
pub(crate) async fn until_open<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut PacketStream<S>,
    deadline: Instant,
    metrics: &ProxyMetrics,
) -> Result<OpenRequest, Ended> {
    until_open_with(client, deadline, metrics, None).await
}

/// Answers the client until it sends CONNECT_OPEN, or until `deadline`. With `login`, the
/// client must first log in with a password: AUTH_LIST says SASL, the SASL calls go to `login`,
/// and a CONNECT_OPEN before it succeeded is refused.
pub(crate) async fn until_open_with<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut PacketStream<S>,
    deadline: Instant,
    metrics: &ProxyMetrics,
    mut login: Option<&mut FrontLogin>,
) -> Result<OpenRequest, Ended> {
    let mut wants_keepalive = false;
    loop {
        let read = tokio::time::timeout_at(deadline, client.read_packet(PREOPEN_MAX_LEN)).await;
        let bytes = match read {
            Err(_) => return Err(Ended::closed("client sent no CONNECT_OPEN in time")),
            Ok(Ok(None)) => return Err(Ended::closed("client closed before CONNECT_OPEN")),
            Ok(Err(e)) => return Err(protocol_error(metrics, "client", &e)),
            Ok(Ok(Some(bytes))) => bytes,
        };
        let packet = match Packet::parse(bytes) {
            Ok(packet) => packet,
            Err(e) => return Err(protocol_error(metrics, "client", &ReadError::Frame(e))),
        };
        let header = packet.header;
        let call = PreOpenCall::parse(&packet);
        let answered = match (&call, login.as_deref_mut()) {
            (PreOpenCall::Sasl(procedure), Some(login)) => {
                Some(sasl_step(login, *procedure, &header, packet.payload))
            }
            (PreOpenCall::Open(_) | PreOpenCall::MalformedOpen, Some(login))
                if login.user().is_none() =>
            {
                Some(login.open_too_early(&header))
            }
            _ => None,
        };
        if let Some(Answer::Refuse(reply, ended)) = answered {
            let _ = tokio::time::timeout_at(deadline, client.write_packet(&reply)).await;
            let _ = tokio::time::timeout_at(deadline, client.get_mut().shutdown()).await;
            return Err(ended);
        }
        let login_reply = match answered {
            Some(Answer::Reply(reply)) => Some(reply),
            _ => None,
        };
        match call {
            PreOpenCall::Open(args) => {
                return Ok(OpenRequest {
                    header,
                    args,
                    wants_keepalive,
                })
            }
            PreOpenCall::MalformedOpen => {
                metrics
                    .protocol_errors
                    .with_label_values(&["client", "bad_connect_open"])
                    .inc();
                let refusal = super::outcome::Refusal {
                    result: ConnectionResult::ProtocolError,
                    code: ErrorNumber::RPC,
                    domain: ErrorDomain::FROM_RPC,
                    message: "virtgate: malformed CONNECT_OPEN".into(),
                    detail: "malformed CONNECT_OPEN".into(),
                };
                return Err(refusal.send(client, &header).await);
            }
            _ => {}
        }
        let password = login.is_some();
        let Some(reply) =
            login_reply.or_else(|| answer(&call, &header, &mut wants_keepalive, password))
        else {
            continue;
        };
        // Within the same budget: a client that sends but never reads cannot hold this.
        match tokio::time::timeout_at(deadline, client.write_packet(&reply)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Ended::closed("client left during the pre-open exchange")),
            Err(_) => return Err(Ended::closed("client stopped reading before CONNECT_OPEN")),
        }
    }
}

fn sasl_step(login: &mut FrontLogin, procedure: u32, h: &Header, payload: &[u8]) -> Answer {
    match procedure {
        PROC_AUTH_SASL_INIT => login.init(h),
        PROC_AUTH_SASL_START => login.start(h, payload),
        _ => login.step(h, payload),
    }
}

/// Counts a framing violation by `side` and ends the connection with it.
pub(crate) fn protocol_error(metrics: &ProxyMetrics, side: &'static str, e: &ReadError) -> Ended {
    let reason = match e {
        ReadError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => "truncated",
        ReadError::TooLarge { .. } => "too_large_before_open",
        other => other.reason(),
    };
    metrics
        .protocol_errors
        .with_label_values(&[side, reason])
        .inc();
    Ended::new(ConnectionResult::ProtocolError, format!("{side}: {e}"))
}
