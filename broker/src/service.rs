//! The running broker: background services around the inventory (Pingora-style): the HTTP API,
//! the probe scheduler, the discovery consumer and the retention sweeper.

mod probes;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use virtgate_discovery::{Browser, DiscoveryConfig, DiscoveryEvent};

use crate::api::{self, ApiState};
use crate::cert::{parse_certificate, CertInfo, Windows};
use crate::config::BrokerConfig;
use crate::inventory::{Inventory, SystemClock, TrustPolicy};
use crate::metrics::Metrics;
use crate::model::EventKind;
use crate::probe::bypass::Checker as BypassChecker;
use crate::store::Store;
use crate::tls::{self, TrustAnchors};
use crate::token::{load_or_create_token, random_hex};
use crate::BrokerError;
use probes::ProbeScheduler;
pub use probes::{ProbeRequests, ON_DEMAND_MIN_INTERVAL};

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
    /// Asks for a host to be probed now (a gateway saw a key other than its pin).
    pub probes: ProbeRequests,
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

/// The broker's identity towards agents: its client certificate and key, and their pin.
fn enroll_identity(
    chain: &[rustls::pki_types::CertificateDer<'static>],
    key: &rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<crate::enroll::Identity, BrokerError> {
    Ok(crate::enroll::Identity {
        pin: virtgate_pki::spki_pin(&chain[0])
            .map_err(|e| BrokerError::Config(format!("broker.client_cert_file: {e}")))?,
        chain: chain.to_vec(),
        key: key.clone_key(),
    })
}

/// A certificate chain and its private key.
type ClientIdentity = (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

/// The broker's client certificate and key (for probes and agents), and its identity towards
/// agents made of them.
fn client_identities(
    config: &BrokerConfig,
) -> Result<(Option<ClientIdentity>, Option<crate::enroll::Identity>), BrokerError> {
    let client_identity = match (&config.client_cert_file, &config.client_key_file) {
        (Some(cert), Some(key)) => Some((tls::read_certs(cert)?, tls::read_key(key)?)),
        (None, None) => None,
        _ => {
            return Err(BrokerError::Config(
                "set both broker.client_cert_file and broker.client_key_file, or neither".into(),
            ))
        }
    };
    let enroll_identity = client_identity
        .as_ref()
        .map(|(chain, key)| enroll_identity(chain, key))
        .transpose()?;
    Ok((client_identity, enroll_identity))
}

/// Enrollment tokens and per-host secrets in the data directory.
fn open_enrollments(
    config: &BrokerConfig,
    inventory: Arc<Inventory>,
    identity: Option<crate::enroll::Identity>,
) -> Result<Arc<crate::enroll::Enrollments>, BrokerError> {
    let secrets = crate::enroll::secrets::SecretStore::open(&config.data_dir).map_err(|e| {
        BrokerError::DataDir {
            path: config
                .data_dir
                .join(crate::enroll::secrets::SECRET_DIR)
                .display()
                .to_string(),
            source: e,
        }
    })?;
    Ok(Arc::new(crate::enroll::Enrollments::new(
        crate::enroll::tokens::TokenStore::open(&config.data_dir)?,
        secrets,
        inventory,
        identity,
        config
            .agent_gateway_pins
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect(),
    )))
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
    let (client_identity, enroll_identity) = client_identities(config)?;
    let tls_config = tls::probe_client_config(client_identity)?;
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
    let (probes, probe_rx) = ProbeScheduler::channel();
    let mut tasks = JoinSet::new();

    for host in &config.hosts {
        if let Some(name) = inventory.upsert_static(host)? {
            probes.schedule(name);
        }
    }

    let enrollments = open_enrollments(config, inventory.clone(), enroll_identity)?;
    tasks.spawn(enrollments.clone().run(shutdown.clone()));
    let admin_token_path = tokens.admin_path.clone();
    let (users, credentials_dir, credentials) = open_passwords(config)?;
    let mut state = tokens.api_state(
        config,
        inventory.clone(),
        metrics.clone(),
        probes.clone(),
        users.clone(),
        credentials,
    )?;
    Arc::get_mut(&mut state)
        .expect("the API state is not shared yet")
        .enrollments = Some(enrollments);
    let epoch = state.epoch.clone();
    let scheme = if api_tls.is_some() { "https" } else { "http" };
    tasks.spawn(api::serve(listener, api_tls, state, shutdown.clone()));
    let scheduler = ProbeScheduler::new(
        inventory.clone(),
        metrics.clone(),
        tls_config,
        bypass,
        config,
    );
    tasks.spawn(scheduler.run(probe_rx, shutdown.clone()));
    if config.discovery {
        let browser = {
            let discovery = discovery.clone();
            tokio::task::spawn_blocking(move || Browser::start(&discovery))
                .await
                .map_err(|e| BrokerError::Config(e.to_string()))??
        };
        tasks.spawn(consume_discovery(
            browser,
            config.clone(),
            inventory.clone(),
            metrics.clone(),
            probes.clone(),
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
        probes,
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
        probes: ProbeRequests,
        users: Arc<crate::users::UsersStore>,
        credentials: virtgate_api::users::CredentialsDir,
    ) -> Result<Arc<ApiState>, BrokerError> {
        let epoch =
            random_hex(16).map_err(|e| BrokerError::Config(format!("no randomness: {e}")))?;
        let max_watchers = config.max_watchers.max(1);
        Ok(Arc::new(ApiState {
            inventory,
            metrics,
            probes,
            probe_wait: config.probe_timeout * 3 + Duration::from_secs(2),
            admin_token: self.admin,
            read_token: self.read,
            token_path: self.admin_path.display().to_string(),
            epoch,
            reads_need_auth: config.reads_need_auth(),
            watchers: Semaphore::new(max_watchers),
            max_watchers,
            requests: Semaphore::new(api::MAX_REQUESTS),
            slot_wait: api::SLOT_WAIT,
            enrollments: None,
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

/// Feeds LAN announcements into the inventory. It remembers what is announced now, so a host an
/// operator forgets while it still announces itself comes back at once, as new (its pin and
/// history gone): the browser reports an instance once, not at every re-announcement.
async fn consume_discovery(
    mut browser: Browser,
    config: BrokerConfig,
    inventory: Arc<Inventory>,
    metrics: Arc<Metrics>,
    probes: ProbeRequests,
    shutdown: CancellationToken,
) {
    let mut announced = std::collections::BTreeMap::new();
    let mut revisions = inventory.subscribe();
    loop {
        tokio::select! {
            event = browser.next_event() => {
                let Some(event) = event else { break };
                metrics.discovery_events.with_label_values(&[event.kind()]).inc();
                match &event {
                    DiscoveryEvent::Appeared(ad) | DiscoveryEvent::Updated(ad)
                        if config.ignores(ad.short_hostname()) =>
                    {
                        continue;
                    }
                    DiscoveryEvent::Appeared(ad) | DiscoveryEvent::Updated(ad) => {
                        announced.insert(ad.instance.clone(), ad.clone());
                    }
                    DiscoveryEvent::Removed { instance, .. } => {
                        announced.remove(instance);
                    }
                }
                match inventory.discovered(&event) {
                    Ok(Some(name)) => probes.schedule(name),
                    Ok(None) => {}
                    Err(e) => warn!(error = %e, "could not record a discovery event"),
                }
            }
            changed = revisions.changed() => {
                if changed.is_err() { break }
                revisions.mark_unchanged();
                for name in inventory.restore_announced(announced.values()) {
                    probes.schedule(name);
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
