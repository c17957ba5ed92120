//! The running broker: background services around the inventory (Pingora-style): the HTTP API,
//! the probe scheduler, the discovery consumer and the retention sweeper.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ClientConfig;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use virtgate_discovery::{Browser, DiscoveryConfig};

use crate::api::{self, ApiState};
use crate::cert::{parse_certificate, CertInfo, Windows};
use crate::config::BrokerConfig;
use crate::inventory::{Inventory, SystemClock, TrustPolicy};
use crate::metrics::Metrics;
use crate::model::EventKind;
use crate::probe::bypass::Checker as BypassChecker;
use crate::probe::{probe, ProbeError, ProbeErrorReason, ProbeResult};
use crate::store::Store;
use crate::tls::{self, TrustAnchors};
use crate::token::{load_or_create_token, random_hex};
use crate::BrokerError;

pub const ADMIN_TOKEN_FILE: &str = "admin.token";
pub const DATABASE_FILE: &str = "inventory.sqlite";

/// A broker running in this process.
pub struct RunningBroker {
    pub inventory: Arc<Inventory>,
    pub metrics: Arc<Metrics>,
    /// Where the HTTP API listens (useful with port 0).
    pub api_addr: SocketAddr,
    /// `https`, or `http` (loopback only).
    pub api_scheme: &'static str,
    pub admin_token_path: PathBuf,
    /// The users who may log in at the gateway with a password.
    pub users: Arc<crate::users::UsersStore>,
    /// Where the gateway's credentials for hosts that demand SASL are kept.
    pub credentials_dir: PathBuf,
    /// Random per start; gateways following the users long-poll resynchronise when it changes.
    pub epoch: String,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl RunningBroker {
    /// Stops every background service and waits for them.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Creates the data directory (0700) if needed.
pub fn prepare_data_dir(dir: &Path) -> Result<(), BrokerError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| BrokerError::DataDir {
                path: dir.display().to_string(),
                source: e,
            })?;
    } else if let Ok(meta) = std::fs::metadata(dir) {
        if meta.permissions().mode() & 0o077 != 0 {
            warn!(path = %dir.display(), "data directory is readable by others; consider chmod 700");
        }
    }
    Ok(())
}

pub async fn start(
    config: &BrokerConfig,
    discovery: &DiscoveryConfig,
) -> Result<RunningBroker, BrokerError> {
    start_with(config, discovery, Vec::new()).await
}

/// The probes' TLS client configuration, with `broker.client_cert_file` / `client_key_file`.
fn probe_tls_config(config: &BrokerConfig) -> Result<Arc<ClientConfig>, BrokerError> {
    let client_identity = match (&config.client_cert_file, &config.client_key_file) {
        (Some(cert), Some(key)) => Some((tls::read_certs(cert)?, tls::read_key(key)?)),
        (None, None) => None,
        _ => {
            return Err(BrokerError::Config(
                "set both broker.client_cert_file and broker.client_key_file, or neither".into(),
            ))
        }
    };
    Ok(tls::probe_client_config(client_identity)?)
}

/// The users (`users.json`) and the host-credentials directory under `broker.data_dir`.
fn open_passwords(
    config: &BrokerConfig,
) -> Result<
    (
        Arc<crate::users::UsersStore>,
        PathBuf,
        virtgate_api::users::CredentialsDir,
    ),
    BrokerError,
> {
    let users = Arc::new(
        crate::users::UsersStore::open(&config.data_dir)
            .map_err(|e| BrokerError::Config(e.to_string()))?,
    );
    let credentials_dir = config.data_dir.join(virtgate_api::users::CREDENTIALS_DIR);
    let credentials = virtgate_api::users::CredentialsDir::open(&credentials_dir).map_err(|e| {
        BrokerError::DataDir {
            path: credentials_dir.display().to_string(),
            source: e,
        }
    })?;
    Ok((users, credentials_dir, credentials))
}

/// Like [`start`], with more of virtgate's own certificates (role, PEM file) whose expiry the
/// metrics should show (the proxy's, in `virtgate up`).
pub async fn start_with(
    config: &BrokerConfig,
    discovery: &DiscoveryConfig,
    extra_own_certificates: Vec<(String, PathBuf)>,
) -> Result<RunningBroker, BrokerError> {
    prepare_data_dir(&config.data_dir)?;
    let api_tls = api_tls(config)?;
    let tokens = Tokens::load(config)?;
    let store = Store::open(&config.data_dir.join(DATABASE_FILE))?;
    let anchors = TrustAnchors::from_files(&config.trusted_ca_files)?;
    let tls_config = probe_tls_config(config)?;
    let policy = TrustPolicy {
        windows: Windows {
            warning: config.warning_window,
            critical: config.critical_window,
        },
        first_sight: config.first_sight,
        anchors,
    };
    let inventory = Arc::new(Inventory::open(store, policy, Arc::new(SystemClock))?);
    let metrics = Arc::new(Metrics::new());
    metrics.set_own_certificates(own_certificates(config, &extra_own_certificates)?);
    let bypass = BypassChecker::from_config(config, metrics.probe_duration.clone())?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| BrokerError::Listen {
            addr: config.listen,
            source: e,
        })?;
    let api_addr = listener.local_addr().map_err(|e| BrokerError::Listen {
        addr: config.listen,
        source: e,
    })?;

    let shutdown = CancellationToken::new();
    let (probe_tx, probe_rx) = mpsc::unbounded_channel::<String>();
    let mut tasks = JoinSet::new();

    for host in &config.hosts {
        if let Some(name) = inventory.upsert_static(host)? {
            let _ = probe_tx.send(name);
        }
    }

    let admin_token_path = tokens.admin_path.clone();
    let (users, credentials_dir, credentials) = open_passwords(config)?;
    let state = tokens.api_state(
        config,
        inventory.clone(),
        metrics.clone(),
        users.clone(),
        credentials,
    )?;
    let epoch = state.epoch.clone();
    let scheme = if api_tls.is_some() { "https" } else { "http" };
    tasks.spawn(api::serve(listener, api_tls, state, shutdown.clone()));
    tasks.spawn(
        ProbeScheduler {
            inventory: inventory.clone(),
            metrics: metrics.clone(),
            tls: tls_config,
            bypass,
            interval: config.probe_interval,
            timeout: config.probe_timeout,
            limit: Arc::new(Semaphore::new(config.probe_concurrency.max(1))),
            in_flight: Arc::new(Mutex::new(HashMap::new())),
        }
        .run(probe_rx, shutdown.clone()),
    );
    if config.discovery {
        let browser = {
            let discovery = discovery.clone();
            tokio::task::spawn_blocking(move || Browser::start(&discovery))
                .await
                .map_err(|e| BrokerError::Config(e.to_string()))??
        };
        tasks.spawn(consume_discovery(
            browser,
            inventory.clone(),
            metrics.clone(),
            probe_tx.clone(),
            shutdown.clone(),
        ));
    }
    tasks.spawn(sweep_retention(
        inventory.clone(),
        config.retention,
        shutdown.clone(),
    ));
    info!(api = %format!("{scheme}://{api_addr}"), reads_need_auth = config.reads_need_auth(), data_dir = %config.data_dir.display(), discovery = config.discovery, static_hosts = config.hosts.len(), "broker started");
    Ok(RunningBroker {
        inventory,
        metrics,
        api_addr,
        api_scheme: scheme,
        admin_token_path,
        users,
        credentials_dir,
        epoch,
        shutdown,
        tasks,
    })
}

/// The admin token (generated in the data directory) and the read token, if configured.
struct Tokens {
    admin: String,
    admin_path: PathBuf,
    read: Option<String>,
}

impl Tokens {
    fn load(config: &BrokerConfig) -> Result<Self, BrokerError> {
        let admin_path = config.data_dir.join(ADMIN_TOKEN_FILE);
        let admin = load_or_create_token(&admin_path, "admin")?;
        let read = match &config.read_token_file {
            Some(path) => Some(load_or_create_token(path, "read")?),
            None => None,
        };
        Ok(Self {
            admin,
            admin_path,
            read,
        })
    }

    /// The API's state: these tokens, a fresh epoch, the auth rule and the pools.
    fn api_state(
        self,
        config: &BrokerConfig,
        inventory: Arc<Inventory>,
        metrics: Arc<Metrics>,
        users: Arc<crate::users::UsersStore>,
        credentials: virtgate_api::users::CredentialsDir,
    ) -> Result<Arc<ApiState>, BrokerError> {
        let epoch =
            random_hex(16).map_err(|e| BrokerError::Config(format!("no randomness: {e}")))?;
        let max_watchers = config.max_watchers.max(1);
        Ok(Arc::new(ApiState {
            inventory,
            metrics,
            admin_token: self.admin,
            read_token: self.read,
            token_path: self.admin_path.display().to_string(),
            epoch,
            reads_need_auth: config.reads_need_auth(),
            watchers: Semaphore::new(max_watchers),
            max_watchers,
            requests: Semaphore::new(api::MAX_REQUESTS),
            slot_wait: api::SLOT_WAIT,
            users,
            credentials,
        }))
    }
}

/// The API's TLS acceptor, if `broker.tls_cert_file`/`tls_key_file` are set; refuses plain HTTP
/// on a listener beyond loopback.
fn api_tls(config: &BrokerConfig) -> Result<Option<TlsAcceptor>, BrokerError> {
    match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => {
            let tls = api::server_config(cert, key, &config.proxy_ca_files)?;
            Ok(Some(TlsAcceptor::from(tls)))
        }
        (None, None) if config.listens_on_loopback() => Ok(None),
        (None, None) => Err(BrokerError::PlainHttpBeyondLoopback {
            addr: config.listen,
        }),
        _ => Err(BrokerError::Config(
            "set both broker.tls_cert_file and broker.tls_key_file, or neither".into(),
        )),
    }
}

/// The certificates virtgate itself holds: the probe/backend client identity and the trusted CAs.
fn own_certificates(
    config: &BrokerConfig,
    extra: &[(String, PathBuf)],
) -> Result<Vec<(String, CertInfo)>, BrokerError> {
    let mut out = Vec::new();
    let mut add = |role: &str, path: &Path| -> Result<(), BrokerError> {
        for (i, der) in tls::read_certs(path)?.iter().enumerate() {
            let info = parse_certificate(der, i)
                .map_err(|e| BrokerError::Config(format!("{}: {e}", path.display())))?;
            out.push((
                if i == 0 {
                    role.to_string()
                } else {
                    "ca".to_string()
                },
                info,
            ));
        }
        Ok(())
    };
    let mut seen = std::collections::HashSet::new();
    let mut files: Vec<(&str, &Path)> = Vec::new();
    if let Some(cert) = &config.client_cert_file {
        files.push(("proxy_client", cert));
    }
    files.extend(
        extra
            .iter()
            .map(|(role, path)| (role.as_str(), path.as_path())),
    );
    files.extend(
        config
            .trusted_ca_files
            .iter()
            .map(|ca| ("ca", ca.as_path())),
    );
    for (role, path) in files {
        if seen.insert(path.to_path_buf()) {
            add(role, path)?;
        }
    }
    Ok(out)
}

async fn consume_discovery(
    mut browser: Browser,
    inventory: Arc<Inventory>,
    metrics: Arc<Metrics>,
    probe_tx: mpsc::UnboundedSender<String>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            event = browser.next_event() => {
                let Some(event) = event else { break };
                metrics.discovery_events.with_label_values(&[event.kind()]).inc();
                match inventory.discovered(&event) {
                    Ok(Some(name)) => { let _ = probe_tx.send(name); }
                    Ok(None) => {}
                    Err(e) => warn!(error = %e, "could not record a discovery event"),
                }
            }
            () = shutdown.cancelled() => break,
        }
    }
    let _ = tokio::task::spawn_blocking(move || browser.shutdown()).await;
}

async fn sweep_retention(
    inventory: Arc<Inventory>,
    retention: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                for name in inventory.unseen_longer_than(inventory.now(), retention) {
                    let why = format!("not seen for more than {}", humantime::format_duration(retention));
                    if let Err(e) = inventory.forget(&name, &why, EventKind::ExpiredRetention) {
                        warn!(host = %name, error = %e, "could not expire host");
                    }
                }
            }
            () = shutdown.cancelled() => return,
        }
    }
}

struct ProbeScheduler {
    inventory: Arc<Inventory>,
    metrics: Arc<Metrics>,
    tls: Arc<ClientConfig>,
    /// Whether users can walk around the gateway; `None` without `broker.user_ca_files`.
    bypass: Option<Arc<BypassChecker>>,
    interval: Duration,
    timeout: Duration,
    limit: Arc<Semaphore>,
    /// Hosts being probed, and whether another request came in meanwhile (addresses changed):
    /// such requests are coalesced into one follow-up probe instead of being dropped.
    in_flight: Arc<Mutex<HashMap<String, bool>>>,
}

impl ProbeScheduler {
    async fn run(self, mut requests: mpsc::UnboundedReceiver<String>, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut running = JoinSet::new();
        loop {
            tokio::select! {
                Some(name) = requests.recv() => this.clone().spawn(name, &mut running),
                _ = tick.tick() => {
                    for name in this.inventory.due_for_probe(this.inventory.now(), this.interval) {
                        this.clone().spawn(name, &mut running);
                    }
                }
                Some(_) = running.join_next(), if !running.is_empty() => {}
                () = shutdown.cancelled() => break,
            }
        }
        running.abort_all();
    }

    fn spawn(self: Arc<Self>, name: String, running: &mut JoinSet<()>) {
        {
            let mut in_flight = self.in_flight.lock().expect("probe set poisoned");
            if let Some(again) = in_flight.get_mut(&name) {
                *again = true;
                return;
            }
            in_flight.insert(name.clone(), false);
        }
        running.spawn(async move {
            loop {
                let permit = self.limit.clone().acquire_owned().await;
                self.probe_host(&name).await;
                drop(permit);
                let mut in_flight = self.in_flight.lock().expect("probe set poisoned");
                if in_flight.get(&name) == Some(&true) {
                    in_flight.insert(name.clone(), false);
                    continue;
                }
                in_flight.remove(&name);
                break;
            }
        });
    }

    async fn probe_host(&self, name: &str) {
        let Some(host) = self.inventory.host(name) else {
            return;
        };
        let addresses = if host.addresses.is_empty() {
            resolve(name, host.port).await
        } else {
            // Addresses an announcement added to a pinned host are probed too: that is how
            // they get verified (or not).
            let mut all = host.addresses.clone();
            all.extend(host.pending_addresses.iter().copied());
            Ok(all)
        };
        let mut results: Vec<ProbeResult> = match addresses {
            Ok(addresses) => {
                let probes = addresses
                    .into_iter()
                    .map(|a| probe(self.tls.clone(), a, host.port, self.timeout));
                futures_util::future::join_all(probes).await
            }
            Err(e) => vec![ProbeResult {
                address: IpAddr::from([0, 0, 0, 0]),
                duration: Duration::ZERO,
                outcome: Err(e),
                bypass: None,
            }],
        };
        if let Some(bypass) = &self.bypass {
            bypass
                .check(&host, &mut results, host.port, self.timeout)
                .await;
        }
        for r in &results {
            self.metrics
                .probe_duration
                .observe(r.duration.as_secs_f64());
            if let Err(e) = &r.outcome {
                self.metrics
                    .probe_errors
                    .with_label_values(&[e.reason.as_str()])
                    .inc();
            }
        }
        if let Err(e) = self.inventory.record_probe(name, results) {
            warn!(host = name, error = %e, "could not record probe result");
        }
    }
}

async fn resolve(name: &str, port: u16) -> Result<Vec<IpAddr>, ProbeError> {
    match tokio::net::lookup_host((name, port)).await {
        Ok(addrs) => {
            let mut v: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
            v.sort_by_key(|ip| (ip.is_ipv6(), *ip));
            v.dedup();
            Ok(v)
        }
        Err(e) => Err(ProbeError {
            reason: ProbeErrorReason::Unreachable,
            message: format!(
                "cannot resolve {name}: {e}; list its addresses under [[broker.hosts]]"
            ),
        }),
    }
}
