//! The proxy: the TLS front door that relays libvirt RPC from authenticated clients to hosts.
//!
//! Owns: client TLS termination and authentication (certificate, DN allow-list, and SCRAM
//! password logins against users' verifiers, with failed logins limited), the part of the
//! libvirt RPC protocol the gateway answers itself before CONNECT_OPEN (AUTH_LIST, SASL,
//! keepalive feature, PINGs), routing CONNECT_OPEN by the host named in the URI, per-identity
//! policy (deny / read-only / read-write, for DNs and `user:` names), backend mTLS with host keys
//! checked against the pins of its host table, the gateway's own SCRAM login to hosts that
//! demand SASL, the frame relay and its metrics; SCRAM itself ([`auth::scram`]) for both roles.
//! Must not: decide host trust itself (its host table says, fed by its owner from the broker's
//! inventory), depend on the broker, its store or discovery, contact any host before the client
//! is authenticated and authorised for it, log secrets (passwords, verifiers, SaltedPasswords),
//! tell an unknown user from a wrong password on the wire, or hand-roll crypto primitives.
#![forbid(unsafe_code)]

pub mod auth;
mod calls;
pub mod config;
pub mod directory;
mod handshakes;
pub mod metrics;
pub mod policy;
mod relay;
mod server;
mod session;
pub mod tls;
mod workers;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use calls::RefusedCall;
pub use config::{HostListener, ProxyConfig};
pub use directory::{Admission, HostTable, HostTableWatch, HostTarget, RefuseReason};
pub use metrics::ProxyMetrics;
pub use policy::{Mode, Rule};
pub use session::{canonical, ConnectionResult, Route, UriError, UriRules};
pub use tls::{TlsFiles, TlsMaterial};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Tls(#[from] tls::ProxyTlsError),
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error("cannot listen on {addr}: {source}; choose another proxy.listen address or stop what uses it")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot start the proxy's connection threads: {0}; lower proxy.connection_threads")]
    Threads(std::io::Error),
}

/// A proxy running in this process.
pub struct RunningProxy {
    /// Bound client-facing addresses (useful with port 0), then host listeners.
    pub addresses: Vec<SocketAddr>,
    tls: watch::Sender<Arc<TlsMaterial>>,
    files: TlsFiles,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    threads: Arc<workers::ConnectionThreads>,
    metrics: ProxyMetrics,
    front_auth: auth::FrontAuth,
}

impl RunningProxy {
    /// Re-reads every certificate, key and CA file and swaps them in atomically; connections
    /// already open keep the material they started with.
    pub fn reload_tls(&self) -> Result<(), ProxyError> {
        let material = TlsMaterial::load_for(&self.files, self.front_auth)?;
        report_crl(&material, &self.metrics);
        self.tls.send_replace(Arc::new(material));
        Ok(())
    }

    pub fn tls_material(&self) -> Arc<TlsMaterial> {
        self.tls.borrow().clone()
    }

    /// Stops accepting, closes open sessions (those still in their handshake after a grace
    /// period) and waits for every task and connection thread.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        // The accept loops held the other references to the pool.
        if let Ok(threads) = Arc::try_unwrap(self.threads) {
            threads.join().await;
        }
    }
}

/// Starts the listeners. `files` locates the TLS material; `hosts` is the table of hosts the
/// gateway may reach, kept current by its owner. No users and no host credentials: see
/// [`start_with_logins`].
pub async fn start(
    config: &ProxyConfig,
    files: TlsFiles,
    hosts: HostTableWatch,
    registry: &prometheus::Registry,
) -> Result<RunningProxy, ProxyError> {
    start_with_logins(config, files, hosts, auth::Logins::none(), registry).await
}

/// [`start`], with the users who may log in with a password at the front door and the
/// credentials of hosts that demand a SASL login, both kept current by the owner.
pub async fn start_with_logins(
    config: &ProxyConfig,
    files: TlsFiles,
    hosts: HostTableWatch,
    logins: auth::Logins,
    registry: &prometheus::Registry,
) -> Result<RunningProxy, ProxyError> {
    for identity in policy::Policy::unanchored(&config.rules) {
        tracing::warn!(
            identity,
            "this proxy.rules identity starts with `*`: it matches the end of any subject of any CA in proxy.client_ca_files (O=Evil,CN=xCN=alice ends in CN=alice); write the full DN or a fixed prefix such as \"C=GB,O=Example,CN=*\" (docs/proxy.md)"
        );
    }
    if config.rules.is_empty() {
        tracing::warn!(
            "proxy.rules is empty: every client will be denied (default deny); add [[proxy.rules]]"
        );
    }
    let material = Arc::new(TlsMaterial::load_for(&files, config.front_auth)?);
    let metrics = ProxyMetrics::register(registry)?;
    report_crl(&material, &metrics);
    let (tls_tx, tls_rx) = watch::channel(material);
    let gateway = Arc::new(session::Gateway {
        config: config.clone(),
        policy: policy::Policy::new(&config.rules)?,
        allowed_dn: policy::DnAllowList::new(&config.allowed_dn)?,
        uri_rules: config.uri_rules(),
        handshakes: handshakes::PerSource::new(config.max_handshakes_per_source),
        hosts,
        tls: tls_rx,
        metrics: metrics.clone(),
        front_auth: config.front_auth,
        logins,
        failed_logins: Arc::new(auth::FailedLogins::new(config.login_limits())),
    });
    let shutdown = CancellationToken::new();
    let threads = Arc::new(
        workers::ConnectionThreads::start(
            config.connection_threads,
            gateway.clone(),
            shutdown.clone(),
        )
        .map_err(ProxyError::Threads)?,
    );
    let limit = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let mut tasks = JoinSet::new();
    let mut addresses = Vec::new();
    let listeners = config.listen.iter().map(|a| (*a, None)).chain(
        config
            .host_listeners
            .iter()
            .map(|h| (h.listen, Some(h.host.to_ascii_lowercase()))),
    );
    for (addr, host) in listeners {
        let listener = server::bind(addr).map_err(|source| ProxyError::Listen { addr, source })?;
        addresses.push(
            listener
                .local_addr()
                .map_err(|source| ProxyError::Listen { addr, source })?,
        );
        tasks.spawn(server::accept_loop(
            listener,
            host,
            gateway.clone(),
            threads.clone(),
            limit.clone(),
            shutdown.clone(),
        ));
    }
    Ok(RunningProxy {
        addresses,
        tls: tls_tx,
        files,
        shutdown,
        tasks,
        threads,
        metrics,
        front_auth: config.front_auth,
    })
}

/// Exports the CRL's `nextUpdate` and says so when it has passed: revocations made since are
/// unknown to the gateway until a fresh CRL is installed (and SIGHUP reloads it).
fn report_crl(material: &TlsMaterial, metrics: &ProxyMetrics) {
    let Some(next_update) = material.crl_next_update else {
        metrics.crl_next_update.set(0.0);
        return;
    };
    metrics.crl_next_update.set(next_update as f64);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if next_update < now {
        tracing::warn!(
            next_update,
            "proxy.crl_file is stale: its nextUpdate has passed; install a fresh CRL and send SIGHUP"
        );
    }
}
