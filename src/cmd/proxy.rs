//! `virtgate proxy`: the TLS front door alone, following a broker's inventory over HTTPS
//! (verified by CA or pin; the proxy presents its backend identity and/or a token), or over
//! plain HTTP to a broker on loopback. Fit for several replicas behind a load balancer: not
//! ready until it has a copy of the inventory (from the broker, or from its cache file), ready
//! through a broker outage (serving the last copy; each connection still checks the host's
//! pin), staleness on `/metrics`, and a graceful drain on SIGTERM.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::time::Duration;

use anyhow::Context;
use prometheus::{IntCounter, IntGauge};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use virtgate_api::follow::FollowStatus;
use virtgate_api::{ClientIdentity, Followed, Follower};
use virtgate_pki::Pin;
use virtgate_proxy::{RunningProxy, TlsFiles};

use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// Check the way to the broker and exit: load the TLS files, read the broker's inventory once
    /// as the gateway would (same URL, trust and credentials), print what it holds.
    #[arg(long)]
    check: bool,
    /// Broker API to follow: https://HOST:PORT (default: <broker.listen>, https when the broker
    /// serves TLS there). Plain http:// only for a broker on loopback.
    #[arg(long, value_name = "URL")]
    broker: Option<String>,
    /// PEM file of the CA that issued the broker's certificate (proxy.broker_ca_file).
    #[arg(long, value_name = "FILE")]
    broker_ca: Option<PathBuf>,
    /// The broker's key pin, sha256:HEX or pin-sha256:BASE64 (proxy.broker_pin).
    #[arg(long, value_name = "PIN")]
    broker_pin: Option<Pin>,
    /// File holding the token sent to the broker: its read token (proxy.broker_token_file).
    #[arg(long, value_name = "FILE")]
    broker_token_file: Option<PathBuf>,
    #[command(flatten)]
    gateway: super::gateway_flags::GatewayFlags,
}

impl Args {
    pub fn overrides(&self) -> Vec<crate::config::Override> {
        self.gateway.overrides()
    }
}

/// The TLS files named by the configuration; every one must be set.
pub fn tls_files(config: &Config) -> anyhow::Result<TlsFiles> {
    config
        .proxy
        .tls_files(config.broker.trusted_ca_files.clone())
        .map_err(anyhow::Error::msg)
}

/// The client that follows the broker: its URL and trust from the flags, else the `[proxy]`
/// keys, else (the local broker) what the configuration says about it; the backend identity as
/// client certificate; the token, if one is given.
fn broker_client(
    config: &Config,
    args: Args,
    files: &TlsFiles,
) -> anyhow::Result<virtgate_api::Client> {
    let pin = match (args.broker_pin, &config.proxy.broker_pin) {
        (Some(pin), _) => Some(pin),
        (None, Some(text)) => Some(text.parse().context("proxy.broker_pin")?),
        (None, None) => None,
    };
    let ca = args
        .broker_ca
        .or_else(|| config.proxy.broker_ca_file.clone());
    let target = super::api_client::target(config, args.broker.as_deref(), ca, pin)?;
    let identity = ClientIdentity {
        cert_file: files.backend_cert.clone(),
        key_file: files.backend_key.clone(),
    };
    let client = super::api_client::client(&target, Some(&identity))?;
    match args
        .broker_token_file
        .or_else(|| config.proxy.broker_token_file.clone())
    {
        Some(file) => Ok(client.with_token(super::api_client::read_token(&file)?)),
        None => Ok(client),
    }
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    if args.check {
        let files = tls_files(config)?;
        return check_broker(&files, &broker_client(config, args, &files)?).await;
    }
    let files = tls_files(config)?;
    // Every file is checked before the broker is contacted: a wrong key is named at once.
    super::tls_check::proxy_files(config)?;
    let client = broker_client(config, args, &files)?;
    let reporter = client.clone();
    let url = client.url().to_string();
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let (mut follower, followed) = Follower::new(client.clone());
    if let Some(file) = &config.proxy.directory_cache_file {
        if let Err(e) = follower.with_cache(file.clone()) {
            warn!(error = %e, "starting without the cached inventory");
        }
    }
    let status = follower.status();
    tasks.spawn(follower.run(shutdown.child_token()));
    // Start with the broker's inventory when it answers promptly; otherwise start anyway (every
    // host unknown) and pick it up as soon as it arrives.
    let mut first = followed.clone();
    let _ = tokio::time::timeout(FIRST_COPY_WAIT, first.wait_for(Option::is_some)).await;
    let (hosts, publish) = crate::directory::from_broker(followed.clone(), shutdown.child_token());
    tasks.spawn(publish);
    let (users, publish) = crate::logins::from_broker(client.clone(), shutdown.child_token());
    tasks.spawn(publish);
    let host_credentials: Arc<dyn virtgate_proxy::auth::HostCredentials> =
        match &config.proxy.host_credentials_dir {
            Some(dir) => Arc::new(crate::logins::DirCredentials::new(
                virtgate_api::users::CredentialsDir::at(dir),
            )),
            None => Arc::new(virtgate_proxy::auth::NoHostCredentials),
        };
    let logins = virtgate_proxy::auth::Logins {
        users,
        host_credentials,
    };
    let registry = Arc::new(prometheus::Registry::new());
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    let mut proxy =
        virtgate_proxy::start_with_logins(&config.proxy, files, hosts, logins, &registry)
            .await
            .context("cannot start the proxy")?;
    if let Some(mismatches) = proxy.key_mismatches() {
        tasks.spawn(super::gateway_flags::report_mismatches(
            mismatches,
            reporter,
            shutdown.child_token(),
        ));
    }
    let listener = tokio::net::TcpListener::bind(config.proxy.metrics_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (proxy.metrics_listen)",
                config.proxy.metrics_listen
            )
        })?;
    let metrics = listener.local_addr()?;
    let follow_metrics = FollowMetrics::register(&registry)?;
    tasks.spawn(follow_metrics.export(status, followed.clone(), shutdown.child_token()));
    let draining = Arc::new(AtomicBool::new(false));
    let going = draining.clone();
    let ready = move || {
        if going.load(Ordering::Relaxed) {
            Some("draining: this gateway is stopping\n")
        } else if followed.borrow().is_none() {
            Some("waiting for the broker's inventory\n")
        } else {
            None
        }
    };
    // `/metrics`, `/healthz` and `/readyz`, which says why not ready: before the broker's
    // inventory has arrived, and while draining.
    let endpoint = virtgate_listen::metrics::Endpoint {
        name: "metrics listener",
        registry,
        readiness: Some(Arc::new(ready)),
        connections: METRICS_CONNECTIONS,
        header_timeout: Duration::from_secs(10),
    };
    tasks.spawn(virtgate_listen::metrics::serve(
        listener,
        endpoint,
        shutdown.child_token(),
    ));
    info!(listen = ?proxy.addresses, broker = %url, metrics = %metrics, "proxy started");
    let waited = wait_with_reload(&proxy).await;
    draining.store(true, Ordering::Relaxed);
    drain(proxy, &config.proxy).await;
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    waited
}

/// `virtgate proxy --check`: what a starting gateway does first, once.
async fn check_broker(files: &TlsFiles, client: &virtgate_api::Client) -> anyhow::Result<()> {
    virtgate_proxy::TlsMaterial::load(files)
        .context("the gateway's TLS files do not load; fix the proxy.*_file keys named above")?;
    let copy = client
        .watch(0, None, Duration::from_secs(1))
        .await
        .with_context(|| {
            format!(
                "cannot read the inventory of the broker at {}; check --broker, the broker's CA or pin and this gateway's credentials (docs/proxy.md, Following a broker)",
                client.url()
            )
        })?;
    let trusted = copy.hosts.iter().filter(|h| h.trust.is_trusted()).count();
    println!(
        "broker {} answered: {} hosts, {trusted} trusted; this gateway can follow it",
        client.url(),
        copy.hosts.len()
    );
    Ok(())
}

/// After the stop signal: stops accepting and lets open sessions end within
/// `proxy.drain_timeout`; a second SIGINT/SIGTERM closes them at once.
pub async fn drain(proxy: RunningProxy, config: &virtgate_proxy::ProxyConfig) {
    let again = async {
        if super::shutdown_signal().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    proxy.drain(config.drain_timeout, again).await;
}

/// How fresh the proxy's copy of the broker's inventory is.
struct FollowMetrics {
    last_sync: IntGauge,
    hosts: IntGauge,
    errors: IntCounter,
}

impl FollowMetrics {
    fn register(registry: &prometheus::Registry) -> anyhow::Result<Self> {
        let metrics = Self {
            last_sync: IntGauge::new(
                "virtgate_proxy_directory_last_sync_timestamp_seconds",
                "Unix seconds of the broker's last answer to this proxy (while it serves a copy from proxy.directory_cache_file, when that copy was saved); 0 before any.",
            )?,
            hosts: IntGauge::new(
                "virtgate_proxy_directory_hosts",
                "Hosts in this proxy's copy of the broker's inventory.",
            )?,
            errors: IntCounter::new(
                "virtgate_proxy_broker_follow_errors_total",
                "Polls of the broker's inventory that failed (unreachable, not verified, refused); the proxy goes on with its last copy.",
            )?,
        };
        registry.register(Box::new(metrics.last_sync.clone()))?;
        registry.register(Box::new(metrics.hosts.clone()))?;
        registry.register(Box::new(metrics.errors.clone()))?;
        Ok(metrics)
    }

    /// Keeps the series current until `shutdown`.
    async fn export(
        self,
        mut status: tokio::sync::watch::Receiver<FollowStatus>,
        mut followed: Followed,
        shutdown: CancellationToken,
    ) {
        loop {
            let now = *status.borrow_and_update();
            self.last_sync.set(now.last_sync);
            self.errors
                .inc_by(now.errors.saturating_sub(self.errors.get()));
            let hosts = followed
                .borrow_and_update()
                .as_ref()
                .map_or(0, |copy| copy.hosts.len());
            self.hosts.set(hosts as i64);
            tokio::select! {
                changed = status.changed() => if changed.is_err() { return },
                changed = followed.changed() => if changed.is_err() { return },
                () = shutdown.cancelled() => return,
            }
        }
    }
}

/// How long `virtgate proxy` waits for the broker's inventory before it starts listening.
const FIRST_COPY_WAIT: Duration = Duration::from_secs(5);
/// Scrapes served at once; more wait in the listen queue.
const METRICS_CONNECTIONS: usize = 64;

/// Waits for SIGINT/SIGTERM; SIGHUP re-reads the TLS files.
pub async fn wait_with_reload(proxy: &RunningProxy) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let stop = super::shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            r = &mut stop => return r,
            _ = hup.recv() => match proxy.reload_tls() {
                Ok(()) => info!("SIGHUP: TLS certificates and keys reloaded"),
                Err(e) => warn!(error = %e, "SIGHUP: reload failed; the previous TLS material stays in use"),
            },
        }
    }
}
