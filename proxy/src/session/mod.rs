//! One client connection, from TLS accept to close, in the steps its files are named after:
//!
//! 1. [`accept`]: TLS handshake (client certificate required, or optional where
//!    `proxy.front_auth` lets a password stand in), DN allow-list, the `0x01` byte.
//! 2. [`preopen`]: until CONNECT_OPEN the gateway answers the client itself (AUTH_LIST,
//!    keepalive feature, PINGs, and the password login of [`login`] when one is needed). No
//!    host is contacted before the client is authenticated and authorised for that host.
//! 3. [`admit`]: CONNECT_OPEN names the host; the policy decides rw/ro; the host table says
//!    whether and how the host may be reached.
//! 4. [`backend`]: the gateway connects with its own certificate, checks the host's key, runs
//!    the host's AUTH_LIST (and its own SASL login, [`host_login`], when the host demands one),
//!    replays keepalive, and forwards CONNECT_OPEN (the host's own name, read-only bit for
//!    `ro`) with the client's serial.
//! 5. Frames are relayed both ways ([`crate::relay`]); [`outcome`] records how it ended.
//!
//! Every refusal after step 1 is a libvirt error REPLY the client prints, sent and recorded in
//! one place ([`outcome::Refusal::send`]).

mod accept;
mod admit;
mod backend;
mod host_login;
mod login;
mod outcome;
mod preopen;
pub(crate) mod secondary;
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

pub use admit::{canonical, Route, UriError, UriRules};
pub(crate) use host_login::LoginFailure as HostLoginFailure;
pub(crate) use login::Failure as LoginFailure;
pub use outcome::ConnectionResult;

use crate::auth::{FailedLogins, FrontAuth, Logins};
use crate::calls::CallGuard;
use crate::config::ProxyConfig;
use crate::directory::HostTableWatch;
use crate::directory::{Admission, RefuseReason};
use crate::handshakes::HandshakeSlot;
use crate::metrics::ProxyMetrics;
use crate::policy::{DnAllowList, Identity, Policy};
use crate::relay::{relay, RelayContext, RelayEnd, RelayLimits};
use crate::tls::TlsMaterial;
use admit::Admitted;
use outcome::{Ended, Outcome};
use tokio::io::AsyncWriteExt;
use virtgate_rpc::Xdr;

/// Everything the gateway's connections share.
pub(crate) struct Gateway {
    pub config: ProxyConfig,
    pub policy: Policy,
    pub allowed_dn: DnAllowList,
    pub hosts: HostTableWatch,
    pub tls: watch::Receiver<Arc<TlsMaterial>>,
    pub metrics: ProxyMetrics,
    pub uri_rules: UriRules,
    /// Connections per source address still in their handshake.
    pub handshakes: crate::handshakes::PerSource,
    /// Hosts that presented a key other than their pin (`RunningProxy::key_mismatches`).
    pub key_mismatch: tokio::sync::mpsc::Sender<String>,
    /// How clients authenticate (`proxy.front_auth`).
    pub front_auth: FrontAuth,
    /// Users and host credentials, kept current by the proxy's owner.
    pub logins: Logins,
    /// Failed password logins per user and per source.
    pub failed_logins: Arc<FailedLogins>,
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
    handshake: HandshakeSlot,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
    gateway.metrics.connections_active.inc();
    let _active = ActiveGuard(gateway.metrics.connections_active.clone());
    let mut out = Outcome::new(peer);
    let steps = Steps {
        gateway: &gateway,
        bound_host: bound_host.as_deref(),
        shutdown,
    };
    let ended = steps.run(tcp, handshake, &mut out).await;
    out.record(&ended, &gateway.metrics, started.elapsed());
}

/// One connection's way through the steps.
struct Steps<'a> {
    gateway: &'a Gateway,
    bound_host: Option<&'a str>,
    shutdown: CancellationToken,
}

impl Steps<'_> {
    /// The steps, in order; each either hands on to the next or says how the connection ended.
    async fn run(self, tcp: TcpStream, handshake: HandshakeSlot, out: &mut Outcome) -> Ended {
        let gateway = self.gateway;
        let material = gateway.tls.borrow().clone();
        // One budget for the TLS handshake and the pre-open exchange together.
        let deadline = Instant::now() + gateway.config.handshake_timeout;
        let (client, dn) = match accept::identify(gateway, &material, tcp, deadline, out).await {
            Ok(accepted) => accepted,
            Err(ended) => return ended,
        };
        let chain = client.get_ref().1.peer_certificates().map(<[_]>::to_vec);
        let mut client = PacketStream::new(client);
        let mut login = gateway.front_auth.needs_password(dn.is_some()).then(|| {
            login::FrontLogin::new(
                gateway.logins.users.borrow().clone(),
                gateway.failed_logins.clone(),
                gateway.metrics.clone(),
                out.peer.ip(),
            )
        });
        let m = &gateway.metrics;
        let opened = preopen::until_open_with(&mut client, deadline, m, login.as_mut()).await;
        let user = login.as_ref().and_then(|l| l.user()).map(String::from);
        let identities: Vec<Identity> = dn
            .map(Identity::Dn)
            .into_iter()
            .chain(user.clone().map(Identity::User))
            .collect();
        if !identities.is_empty() {
            out.identity = Some(crate::policy::describe(&identities));
        }
        let open = match opened {
            Ok(open) => open,
            Err(ended) => return ended,
        };
        drop(handshake);
        let name = open.args.name.clone().unwrap_or_default();
        let decided = admit::decide(
            gateway,
            &identities,
            &name,
            self.bound_host,
            |host| out.host = Some(host.to_string()),
            |mode| out.mode = Some(mode),
        );
        let admitted = match decided {
            Ok(admitted) => admitted,
            Err(refusal) => return refusal.send(&mut client, &open.header).await,
        };
        let opened = match self.reach(&material, &admitted, &open).await {
            Ok(opened) => opened,
            Err(refusal) => return refusal.send(&mut client, &open.header).await,
        };
        let limit = gateway.config.write_timeout;
        if let Some(ended) = hand_over_reply(&mut client, &opened.reply, limit).await {
            return ended;
        }
        let grounds = Grounds {
            tls: gateway.tls.clone(),
            hosts: gateway.hosts.clone(),
            chain: chain.unwrap_or_default(),
            host: admitted.host.clone(),
            pin: admitted.pin,
            users: gateway.logins.users.clone(),
            user,
        };
        self.relay(client, opened.host, &admitted, grounds, out)
            .await
    }

    /// Connects to the admitted host and forwards the client's CONNECT_OPEN.
    async fn reach(
        &self,
        material: &TlsMaterial,
        admitted: &Admitted,
        open: &preopen::OpenRequest,
    ) -> Result<backend::Opened<backend::Backend>, outcome::Refusal> {
        let started = Instant::now();
        let limit = self.gateway.config.backend_connect_timeout;
        let check = secondary::prepare(self.gateway, admitted)?;
        let report = || drop(self.gateway.key_mismatch.try_send(admitted.host.clone()));
        let tls = backend::connect(material, admitted, limit, report, check.as_ref()).await?;
        self.gateway
            .metrics
            .backend_connect_duration
            .observe(started.elapsed().as_secs_f64());
        let side = host_login::HostSide {
            credentials: self.gateway.logins.host_credentials.as_ref(),
            metrics: &self.gateway.metrics,
        };
        backend::open(tls, admitted, open, limit, Some(side)).await
    }

    async fn relay<C, B>(
        &self,
        client: PacketStream<C>,
        backend: PacketStream<B>,
        admitted: &Admitted,
        grounds: Grounds,
        out: &mut Outcome,
    ) -> Ended
    where
        C: AsyncRead + AsyncWrite + Unpin,
        B: AsyncRead + AsyncWrite + Unpin,
    {
        let relayed = Relayed {
            host: &admitted.host,
            forwarded: &admitted.forwarded,
        };
        let guard = CallGuard::new(
            admitted.mode,
            &admitted.host,
            &self.gateway.config.allowed_programs,
        );
        // The session ends with the gateway, or earlier when its grounds go: a task of its own
        // watches them, so the relay's hot loop polls one token and nothing more.
        let session = self.shutdown.child_token();
        let _ends_watcher = session.clone().drop_guard();
        let lost = if self.gateway.config.close_revoked_sessions {
            grounds.watch(session.clone())
        } else {
            Arc::default()
        };
        let ended = relayed
            .run(self.gateway, client, backend, &guard, session, out)
            .await;
        let why = lost.lock().expect("reason lock poisoned").take();
        match why {
            Some(why) => Ended::new(ConnectionResult::Revoked, why),
            None => ended,
        }
    }
}

/// Gives the client the host's answer to CONNECT_OPEN, within `limit` (`write_timeout`). A failed
/// open ends the session: nothing is relayed after it, so no second CONNECT_OPEN can follow.
pub(crate) async fn hand_over_reply<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut PacketStream<S>,
    reply: &[u8],
    limit: std::time::Duration,
) -> Option<Ended> {
    match tokio::time::timeout(limit, client.write_packet(reply)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Some(Ended::closed("client left during CONNECT_OPEN")),
        Err(_) => {
            return Some(Ended::closed(
                "client did not read the CONNECT_OPEN reply within proxy.write_timeout",
            ))
        }
    }
    let packet = virtgate_rpc::Packet::parse(reply).ok()?;
    if packet.header.status == virtgate_rpc::Status::Ok {
        return None;
    }
    let _ = tokio::time::timeout(limit, client.get_mut().shutdown()).await;
    let why = virtgate_rpc::ErrorReply::decode(&mut virtgate_rpc::Reader::new(packet.payload))
        .ok()
        .and_then(|e| e.message)
        .unwrap_or_else(|| "no message".into());
    Some(Ended::new(
        ConnectionResult::OpenFailed,
        format!("the host refused CONNECT_OPEN ({why}); the session ends with it"),
    ))
}

/// What an open session rests on: the client's certificate (checked again when the TLS
/// material, and so the CRL, is reloaded) and the host's admission (checked again whenever the
/// host table changes).
struct Grounds {
    tls: watch::Receiver<Arc<TlsMaterial>>,
    hosts: HostTableWatch,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    host: String,
    pin: Option<virtgate_pki::Pin>,
    users: crate::auth::UsersWatch,
    /// The user who logged in with a password, if one did.
    user: Option<String>,
}

impl Grounds {
    /// Watches on a task of its own; when the grounds go, records why and cancels `session`.
    /// The task ends with the session.
    fn watch(self, session: CancellationToken) -> Arc<std::sync::Mutex<Option<String>>> {
        let reason = Arc::new(std::sync::Mutex::new(None));
        let slot = reason.clone();
        tokio::spawn(async move {
            tokio::select! {
                why = self.lost() => {
                    *slot.lock().expect("reason lock poisoned") = Some(why);
                    session.cancel();
                }
                () = session.cancelled() => {}
            }
        });
        reason
    }

    /// Resolves with the reason once the session may no longer go on.
    async fn lost(&self) -> String {
        let mut tls = self.tls.clone();
        let mut hosts = self.hosts.clone();
        let mut users = self.users.clone();
        tls.mark_unchanged();
        hosts.mark_unchanged();
        users.mark_unchanged();
        loop {
            tokio::select! {
                changed = tls.changed() => {
                    if changed.is_err() {
                        return std::future::pending().await;
                    }
                    let material = tls.borrow_and_update().clone();
                    if self.chain.is_empty() {
                        continue; // a password login: no certificate to check again
                    }
                    if let Err(why) = material.verify_client(&self.chain) {
                        return format!("the client certificate no longer verifies after a reload ({why})");
                    }
                }
                changed = hosts.changed() => {
                    if changed.is_err() {
                        return std::future::pending().await;
                    }
                    let table = hosts.borrow_and_update().clone();
                    if let Some(why) = self.host_lost(&table) {
                        return why;
                    }
                }
                changed = users.changed(), if self.user.is_some() => {
                    if changed.is_err() {
                        return std::future::pending().await;
                    }
                    let table = users.borrow_and_update().clone();
                    if let Some(user) = self.user.as_deref().filter(|u| !table.contains(u)) {
                        return format!("user {user} was removed");
                    }
                }
            }
        }
    }

    fn host_lost(&self, table: &crate::directory::HostTable) -> Option<String> {
        let host = &self.host;
        let Some(target) = table.get(host) else {
            return Some(format!("host {host} was forgotten"));
        };
        match &target.admission {
            Admission::Refuse {
                reason: RefuseReason::Untrusted,
                detail,
                ..
            } => Some(format!("host {host} is no longer trusted ({detail})")),
            // Unreachable hosts keep their sessions: a forged mDNS goodbye must not cut them.
            Admission::Refuse { .. } => None,
            Admission::Connect { pin, .. } if *pin != self.pin => Some(format!(
                "host {host} was re-keyed: its approved pin changed"
            )),
            Admission::Connect { .. } => None,
        }
    }
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
        guard: &CallGuard,
        shutdown: CancellationToken,
        out: &mut Outcome,
    ) -> Ended
    where
        C: AsyncRead + AsyncWrite + Unpin,
        B: AsyncRead + AsyncWrite + Unpin,
    {
        let cfg = &gateway.config;
        let cx = RelayContext {
            host: self.host,
            metrics: &gateway.metrics,
            limits: RelayLimits {
                idle_timeout: cfg.idle_timeout,
                write_timeout: cfg.write_timeout,
            },
            guard,
            shutdown,
        };
        let stats = relay(client.into_inner(), backend.into_inner(), cx).await;
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
            RelayEnd::Refused(reason) => Ended::new(
                ConnectionResult::CallRefused,
                format!(
                    "the client called something that changes who the connection is ({}); answered with an error and closed",
                    reason.as_str()
                ),
            ),
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
