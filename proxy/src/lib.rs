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

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use calls::RefusedCall;
pub use config::{HostListener, ProxyConfig};
pub use directory::{Admission, HostTable, HostTableWatch, HostTarget, RefuseReason, Secondary};
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
    reloader: Arc<Reloader>,
    shutdown: CancellationToken,
    /// Cancelled to stop accepting (a child of `shutdown`).
    accepting: CancellationToken,
    tasks: JoinSet<()>,
    threads: Arc<workers::ConnectionThreads>,
    metrics: ProxyMetrics,
    key_mismatches: Option<mpsc::Receiver<String>>,
}

/// Host names the gateway reported a key mismatch for and nobody has taken yet; more are
/// dropped (the owner re-probes each host once anyway).
const KEY_MISMATCH_QUEUE: usize = 64;

/// Connections the kernel queues for a listener before the gateway accepts them.
const LISTEN_BACKLOG: i32 = 1024;

impl RunningProxy {
    /// The hook for a host that presents a key other than its approved pin: the name of every
    /// such host, as the gateway refuses it. The owner (the binary) has the broker probe it now,
    /// so the new key shows up as `changed` at once instead of at the next probe round. Taken
    /// once; `None` afterwards.
    pub fn key_mismatches(&mut self) -> Option<mpsc::Receiver<String>> {
        self.key_mismatches.take()
    }

    /// Re-reads every certificate, key and CA file and swaps them in atomically; connections
    /// already open keep the material they started with.
    pub fn reload_tls(&self) -> Result<(), ProxyError> {
        self.reloader.reload(&self.metrics)
    }

    pub fn tls_material(&self) -> Arc<TlsMaterial> {
        self.reloader.tls.borrow().clone()
    }

    /// Connections accepted and not finished yet (in their handshake or relayed).
    pub fn open_connections(&self) -> usize {
        self.threads.open_connections()
    }

    /// A graceful stop: closes the listeners at once, lets the open sessions go on until they
    /// end, `limit` passes (`proxy.drain_timeout`) or `cut_short` resolves (a second signal),
    /// then closes those left as [`RunningProxy::shutdown`] does.
    pub async fn drain(
        self,
        limit: std::time::Duration,
        cut_short: impl std::future::Future<Output = ()>,
    ) {
        self.accepting.cancel();
        let open = self.open_connections();
        if open > 0 && !limit.is_zero() {
            tracing::info!(
                open,
                drain_timeout = ?limit,
                "draining: no new connections; open sessions may go on for up to proxy.drain_timeout (a second stop signal closes them now)"
            );
            let finished = async {
                while self.open_connections() > 0 {
                    tokio::time::sleep(DRAIN_POLL).await;
                }
            };
            tokio::select! {
                () = finished => tracing::info!("drained: every session has ended"),
                () = tokio::time::sleep(limit) => tracing::warn!(
                    open = self.open_connections(),
                    "proxy.drain_timeout has passed; closing the sessions still open"
                ),
                () = cut_short => tracing::warn!(
                    open = self.open_connections(),
                    "second stop signal; closing the sessions still open"
                ),
            }
        }
        self.shutdown().await;
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
    let seen = Reloader::contents(&files);
    let material = Arc::new(TlsMaterial::load_for(&files, config.front_auth)?);
    let metrics = ProxyMetrics::register(registry)?;
    report_crl(&material, &metrics);
    let (tls_tx, tls_rx) = watch::channel(material);
    let (mismatch_tx, mismatch_rx) = mpsc::channel(KEY_MISMATCH_QUEUE);
    let gateway = Arc::new(session::Gateway {
        key_mismatch: mismatch_tx,
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
    let accepting = shutdown.child_token();
    let reloader = Arc::new(Reloader {
        files,
        front_auth: config.front_auth,
        tls: tls_tx,
        seen: std::sync::Mutex::new(seen),
    });
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
        let listener = virtgate_listen::bind(addr, LISTEN_BACKLOG)
            .map_err(|source| ProxyError::Listen { addr, source })?;
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
            accepting.clone(),
        ));
    }
    if !config.tls_reload_interval.is_zero() {
        tasks.spawn(reloader.clone().watch(
            config.tls_reload_interval,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    Ok(RunningProxy {
        addresses,
        reloader,
        shutdown,
        accepting,
        tasks,
        threads,
        metrics,
        key_mismatches: Some(mismatch_rx),
    })
}

/// How often a draining proxy looks whether its sessions have ended.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_millis(100);
/// How long changed TLS files must stay unchanged before they are loaded: one writer's files
/// (a certificate, then its key) are taken together.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Loads the TLS files again on SIGHUP, and whenever their contents change (mounted Secrets
/// are updated in place): the new material is published for new connections; open ones keep
/// theirs.
struct Reloader {
    files: TlsFiles,
    /// Whether client certificates are optional (password logins allowed).
    front_auth: auth::FrontAuth,
    tls: watch::Sender<Arc<TlsMaterial>>,
    /// The files' contents when they were last loaded.
    seen: std::sync::Mutex<Vec<Option<Vec<u8>>>>,
}

impl Reloader {
    fn contents(files: &TlsFiles) -> Vec<Option<Vec<u8>>> {
        let paths = [&files.server_cert, &files.server_key]
            .into_iter()
            .chain(&files.client_cas)
            .chain(&files.crl)
            .chain([&files.backend_cert, &files.backend_key])
            .chain(&files.backend_cas);
        paths.map(|p| std::fs::read(p).ok()).collect()
    }

    fn reload(&self, metrics: &ProxyMetrics) -> Result<(), ProxyError> {
        let seen = Self::contents(&self.files);
        let material = TlsMaterial::load_for(&self.files, self.front_auth)?;
        report_crl(&material, metrics);
        self.tls.send_replace(Arc::new(material));
        *self.seen.lock().expect("reload lock poisoned") = seen;
        Ok(())
    }

    /// Every `every`, compares the files with what was loaded; reloads when they changed and
    /// have settled. Material that fails to load is reported once and the previous one stays.
    async fn watch(
        self: Arc<Self>,
        every: std::time::Duration,
        metrics: ProxyMetrics,
        stop: CancellationToken,
    ) {
        let mut failed = None;
        let settle = SETTLE.min(every);
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = stop.cancelled() => return,
            }
            let now = Self::contents(&self.files);
            let unchanged = now == *self.seen.lock().expect("reload lock poisoned");
            if unchanged || failed.as_ref() == Some(&now) {
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(settle) => {}
                () = stop.cancelled() => return,
            }
            if Self::contents(&self.files) != now {
                continue;
            }
            match self.reload(&metrics) {
                Ok(()) => {
                    failed = None;
                    tracing::info!("TLS files changed: certificates, keys and CAs reloaded; open connections keep theirs");
                }
                Err(e) => {
                    failed = Some(now);
                    tracing::warn!(error = %e, "TLS files changed but cannot be loaded; the previous TLS material stays in use until they are fixed");
                }
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    /// A fresh self-signed certificate and key in `dir`, named `name`; returns their paths and
    /// the certificate's DER.
    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_file, key_file) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file, cert.der().to_vec())
    }

    fn served(reloader: &Reloader) -> Vec<u8> {
        let material = reloader.tls.borrow().clone();
        let (role, der) = &material.own_certificates[0];
        assert_eq!(role, "proxy_server");
        der.to_vec()
    }

    async fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn changed_files_are_loaded_once_settled_and_broken_ones_leave_the_material_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let (server_cert, server_key, first) = pair(dir.path(), "server");
        let (client_ca, _, _) = pair(dir.path(), "client-ca");
        let (backend_cert, backend_key, _) = pair(dir.path(), "backend");
        let files = TlsFiles {
            server_cert: server_cert.clone(),
            server_key: server_key.clone(),
            client_cas: vec![client_ca],
            crl: None,
            backend_cert,
            backend_key,
            backend_cas: vec![],
        };
        let seen = Reloader::contents(&files);
        let material = Arc::new(TlsMaterial::load(&files).unwrap());
        let metrics = ProxyMetrics::register(&prometheus::Registry::new()).unwrap();
        let reloader = Arc::new(Reloader {
            files,
            front_auth: auth::FrontAuth::Certificate,
            tls: watch::channel(material).0,
            seen: std::sync::Mutex::new(seen),
        });
        let stop = CancellationToken::new();
        let watching = tokio::spawn(reloader.clone().watch(
            Duration::from_millis(50),
            metrics,
            stop.clone(),
        ));
        assert_eq!(served(&reloader), first);

        // A renewal: certificate and key replaced; new connections get the new pair.
        let (renewed_cert, renewed_key, renewed) = pair(dir.path(), "renewed");
        std::fs::rename(&renewed_key, &server_key).unwrap();
        std::fs::rename(&renewed_cert, &server_cert).unwrap();
        eventually("the renewed certificate is served", || {
            served(&reloader) == renewed
        })
        .await;

        // A key that does not load: the renewed pair stays in use.
        std::fs::write(&server_key, "not a key").unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(served(&reloader), renewed);

        // Fixed: loaded.
        let (fixed_cert, fixed_key, fixed) = pair(dir.path(), "fixed");
        std::fs::rename(&fixed_key, &server_key).unwrap();
        std::fs::rename(&fixed_cert, &server_cert).unwrap();
        eventually("the fixed pair is served", || served(&reloader) == fixed).await;
        stop.cancel();
        watching.await.unwrap();
    }
}
