//! One client connection, from TLS accept to close, in the steps its files are named after:
//!
//! 1. [`accept`]: TLS handshake (client certificate required), DN allow-list, the `0x01` byte.
//! 2. [`preopen`]: until CONNECT_OPEN the gateway answers the client itself (AUTH_LIST,
//!    keepalive feature, PINGs). No host is contacted before the client is authenticated and
//!    authorised for that host.
//! 3. [`admit`]: CONNECT_OPEN names the host; the policy decides rw/ro; the host table says
//!    whether and how the host may be reached.
//! 4. [`backend`]: the gateway connects with its own certificate, checks the host's key, runs
//!    the host's AUTH_LIST, replays keepalive, and forwards CONNECT_OPEN (the host's own name,
//!    read-only bit for `ro`) with the client's serial.
//! 5. Frames are relayed both ways ([`crate::relay`]); [`outcome`] records how it ended.
//!
//! Every refusal after step 1 is a libvirt error REPLY the client prints, sent and recorded in
//! one place ([`outcome::Refusal::send`]).

mod accept;
mod admit;
mod backend;
mod outcome;
mod preopen;
#[cfg(test)]
mod specs;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use virtgate_rpc::PacketStream;

pub use admit::{route, Route};
pub use outcome::ConnectionResult;

use crate::config::ProxyConfig;
use crate::directory::HostTableWatch;
use crate::metrics::ProxyMetrics;
use crate::policy::{DnAllowList, Policy};
use crate::relay::{relay, RelayEnd, RelayLimits};
use crate::tls::TlsMaterial;
use outcome::{Ended, Outcome};

/// Everything the gateway's connections share.
pub(crate) struct Gateway {
    pub config: ProxyConfig,
    pub policy: Policy,
    pub allowed_dn: DnAllowList,
    pub hosts: HostTableWatch,
    pub tls: watch::Receiver<Arc<TlsMaterial>>,
    pub metrics: ProxyMetrics,
}

struct ActiveGuard(prometheus::IntGauge);
impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves one accepted connection and writes its one log line.
pub(crate) async fn serve(
    gateway: Arc<Gateway>,
    tcp: TcpStream,
    peer: SocketAddr,
    bound_host: Option<String>,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
    gateway.metrics.connections_active.inc();
    let _active = ActiveGuard(gateway.metrics.connections_active.clone());
    let mut out = Outcome::new(peer);
    let ended = run(&gateway, tcp, bound_host.as_deref(), shutdown, &mut out).await;
    out.record(&ended, &gateway.metrics, started.elapsed());
}

/// The steps, in order; each either hands on to the next or says how the connection ended.
async fn run(
    gateway: &Gateway,
    tcp: TcpStream,
    bound_host: Option<&str>,
    shutdown: CancellationToken,
    out: &mut Outcome,
) -> Ended {
    let material = gateway.tls.borrow().clone();
    let client = match accept::identify(gateway, &material, tcp, out).await {
        Ok(client) => client,
        Err(ended) => return ended,
    };
    let identity = out.identity.clone().unwrap_or_default();
    let mut client = PacketStream::new(client);
    let deadline = Instant::now() + gateway.config.handshake_timeout;
    let open = match preopen::until_open(&mut client, deadline, &gateway.metrics).await {
        Ok(open) => open,
        Err(ended) => return ended,
    };
    let name = open.args.name.clone().unwrap_or_default();
    let decided = admit::decide(
        gateway,
        &identity,
        &name,
        bound_host,
        |host| out.host = Some(host.to_string()),
        |mode| out.mode = Some(mode),
    );
    let admitted = match decided {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.send(&mut client, &open.header).await,
    };
    let started = Instant::now();
    let limit = gateway.config.backend_connect_timeout;
    let opened = match backend::connect(&material, &admitted, limit).await {
        Ok(tls) => {
            let m = &gateway.metrics;
            m.backend_connect_duration
                .observe(started.elapsed().as_secs_f64());
            backend::open(tls, &admitted, &open, limit).await
        }
        Err(refusal) => Err(refusal),
    };
    let opened = match opened {
        Ok(opened) => opened,
        Err(refusal) => return refusal.send(&mut client, &open.header).await,
    };
    if client.write_packet(&opened.reply).await.is_err() {
        return Ended::closed("client left during CONNECT_OPEN");
    }
    let relayed = Relayed {
        host: &admitted.host,
        forwarded: &admitted.forwarded,
    };
    relayed
        .run(gateway, client, opened.host, shutdown, out)
        .await
}

/// The last step: relaying, and the words for how it ended.
struct Relayed<'a> {
    host: &'a str,
    forwarded: &'a str,
}

impl Relayed<'_> {
    async fn run<C, B>(
        self,
        gateway: &Gateway,
        client: PacketStream<C>,
        backend: PacketStream<B>,
        shutdown: CancellationToken,
        out: &mut Outcome,
    ) -> Ended
    where
        C: AsyncRead + AsyncWrite + Unpin,
        B: AsyncRead + AsyncWrite + Unpin,
    {
        let cfg = &gateway.config;
        let limits = RelayLimits {
            idle_timeout: cfg.idle_timeout,
            write_timeout: cfg.write_timeout,
        };
        let stats = relay(
            client.into_inner(),
            backend.into_inner(),
            self.host,
            &gateway.metrics,
            limits,
            shutdown,
        )
        .await;
        out.calls = stats.calls;
        out.to_host = stats.to_host;
        out.to_client = stats.to_client;
        self.ended(stats.end, cfg.idle_timeout, &gateway.metrics)
    }

    fn ended(&self, end: RelayEnd, idle: std::time::Duration, m: &ProxyMetrics) -> Ended {
        match end {
            RelayEnd::ClientClosed => Ended::closed(format!("forwarded {:?}", self.forwarded)),
            RelayEnd::HostClosed { failed_calls: 0 } => Ended::closed("host closed the connection"),
            RelayEnd::HostClosed { failed_calls } => Ended::closed(format!(
                "host closed the connection with {failed_calls} call(s) in flight; the client got errors for them"
            )),
            RelayEnd::Idle => Ended::new(
                ConnectionResult::IdleTimeout,
                format!("no packet for {idle:?}"),
            ),
            RelayEnd::Shutdown => Ended::closed("gateway shutting down"),
            RelayEnd::Protocol { side, reason } => {
                m.protocol_errors.with_label_values(&[side, reason]).inc();
                Ended::new(
                    ConnectionResult::ProtocolError,
                    format!("{side} violated the framing: {reason}"),
                )
            }
        }
    }
}
