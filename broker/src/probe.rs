//! One TLS handshake to one address: what certificate chain does the host present? And, in
//! [`bypass`], a few more to tell whether users can connect to the host around the gateway.

pub(crate) mod bypass;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
pub use virtgate_api::ProbeErrorReason;

#[derive(Debug, Clone)]
pub struct ProbeError {
    pub reason: ProbeErrorReason,
    pub message: String,
}

pub struct Presented {
    pub chain: Vec<CertificateDer<'static>>,
    pub tls_version: String,
    /// The host's answer to AUTH_LIST (`none`, `sasl`, `polkit`), if it gave one in time.
    pub auth: Option<String>,
}

/// How long the probe waits for libvirtd's confirmation byte and its AUTH_LIST answer after the
/// handshake. Not part of the probe's duration, and no answer is no failure: a host that refuses
/// the probe's certificate closes at once, a TLS server that is not libvirtd never answers.
const AUTH_LIST_WAIT: Duration = Duration::from_millis(500);

pub struct ProbeResult {
    pub address: IpAddr,
    pub duration: Duration,
    pub outcome: Result<Presented, ProbeError>,
    /// The bypass check's verdict, on the one address it was made at ([`bypass::Checker`]);
    /// `None` everywhere when no check was made or it could not tell.
    pub bypass: Option<bypass::Verdict>,
}

/// Connects to `address:port`, completes a TLS handshake and returns the presented chain.
/// Nothing is sent after the handshake; the connection is closed at once.
pub async fn probe(
    config: Arc<ClientConfig>,
    address: IpAddr,
    port: u16,
    timeout: Duration,
) -> ProbeResult {
    let started = Instant::now();
    let outcome = match tokio::time::timeout(timeout, handshake(config, address, port)).await {
        Ok(Ok((mut presented, tls))) => {
            let duration = started.elapsed();
            presented.auth = tokio::time::timeout(AUTH_LIST_WAIT, auth_list(tls))
                .await
                .ok()
                .flatten();
            return ProbeResult {
                address,
                duration,
                outcome: Ok(presented),
                bypass: None,
            };
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ProbeError {
            reason: ProbeErrorReason::Timeout,
            message: format!(
                "no TLS handshake with {} within {timeout:?}",
                SocketAddr::new(address, port)
            ),
        }),
    };
    ProbeResult {
        address,
        duration: started.elapsed(),
        outcome,
        bypass: None,
    }
}

/// libvirtd's confirmation byte, then one AUTH_LIST call: what the host demands of clients.
async fn auth_list(tls: TlsStream<TcpStream>) -> Option<String> {
    use tokio::io::AsyncReadExt;
    use virtgate_rpc::remote::{AuthListReply, AuthType, PROC_AUTH_LIST};
    use virtgate_rpc::{call, Packet, PacketStream, Program, Reader, Status, Xdr};
    let mut tls = tls;
    if tls.read_u8().await.ok()? != 1 {
        return None;
    }
    let mut stream = PacketStream::new(tls);
    stream
        .write_packet(&call(Program::Remote, PROC_AUTH_LIST, 1, &[]))
        .await
        .ok()?;
    let bytes = stream.read_packet(64 * 1024).await.ok()??;
    let packet = Packet::parse(bytes).ok()?;
    if packet.header.status != Status::Ok {
        return None;
    }
    let reply = AuthListReply::decode(&mut Reader::new(packet.payload)).ok()?;
    let names: Vec<&str> = reply
        .0
        .iter()
        .map(|t| match t {
            AuthType::None => "none",
            AuthType::Sasl => "sasl",
            AuthType::Polkit => "polkit",
            _ => "other",
        })
        .collect();
    Some(names.join(","))
}

async fn handshake(
    config: Arc<ClientConfig>,
    address: IpAddr,
    port: u16,
) -> Result<(Presented, TlsStream<TcpStream>), ProbeError> {
    let target = SocketAddr::new(address, port);
    let tcp = TcpStream::connect(target).await.map_err(|e| {
        let reason = match e.kind() {
            std::io::ErrorKind::ConnectionRefused => ProbeErrorReason::Refused,
            std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable => {
                ProbeErrorReason::Unreachable
            }
            _ => ProbeErrorReason::Other,
        };
        ProbeError {
            reason,
            message: format!("cannot connect to {target}: {e}"),
        }
    })?;
    let _ = tcp.set_nodelay(true);
    let tls = TlsConnector::from(config)
        .connect(ServerName::IpAddress(address.into()), tcp)
        .await
        .map_err(|e| ProbeError {
            reason: ProbeErrorReason::Tls,
            message: format!("TLS handshake with {target} failed: {e}"),
        })?;
    let (_, session) = tls.get_ref();
    let chain: Vec<CertificateDer<'static>> = session
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    if chain.is_empty() {
        return Err(ProbeError {
            reason: ProbeErrorReason::NoCertificate,
            message: format!("{target} presented no certificate"),
        });
    }
    let tls_version = session
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    Ok((
        Presented {
            chain,
            tls_version,
            auth: None,
        },
        tls,
    ))
}
