//! The proxy: the TLS front door that relays libvirt RPC from authenticated clients to hosts.
//!
//! Owns: client TLS termination and authentication (certificate, DN allow-list), the part of the
//! libvirt RPC protocol the gateway answers itself before CONNECT_OPEN (AUTH_LIST, keepalive
//! feature, PINGs), routing CONNECT_OPEN by the host named in the URI, per-identity policy
//! (deny / read-only / read-write), backend mTLS with host keys checked against the pins of its
//! host table, the frame relay and its metrics.
//! Must not: decide host trust itself (its host table says, fed by its owner from the broker's
//! inventory), depend on the broker, its store or discovery, contact any host before the client
//! is authenticated and authorised for it, or log secrets.
#![forbid(unsafe_code)]

pub mod config;
pub mod directory;
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

pub use config::{HostListener, ProxyConfig};
pub use directory::{Admission, HostTable, HostTableWatch, HostTarget, RefuseReason};
pub use metrics::ProxyMetrics;
pub use policy::{Mode, Rule};
pub use session::{route, ConnectionResult, Route};
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
}

impl RunningProxy {
    /// Re-reads every certificate, key and CA file and swaps them in atomically; connections
    /// already open keep the material they started with.
    pub fn reload_tls(&self) -> Result<(), ProxyError> {
        let material = TlsMaterial::load(&self.files)?;
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
/// gateway may reach, kept current by its owner.
pub async fn start(
    config: &ProxyConfig,
    files: TlsFiles,
    hosts: HostTableWatch,
    registry: &prometheus::Registry,
) -> Result<RunningProxy, ProxyError> {
    if config.rules.is_empty() {
        tracing::warn!(
            "proxy.rules is empty: every client will be denied (default deny); add [[proxy.rules]]"
        );
    }
    let material = Arc::new(TlsMaterial::load(&files)?);
    let (tls_tx, tls_rx) = watch::channel(material);
    let metrics = ProxyMetrics::register(registry)?;
    let gateway = Arc::new(session::Gateway {
        config: config.clone(),
        policy: policy::Policy::new(&config.rules)?,
        allowed_dn: policy::DnAllowList::new(&config.allowed_dn)?,
        hosts,
        tls: tls_rx,
        metrics,
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
    })
}
