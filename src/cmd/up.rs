//! `virtgate up`: broker, LAN discovery and the TLS gateway in one process, one `/metrics`; on
//! embedded defaults it generates a development PKI (the API's certificate included) and
//! prints how to connect. The gateway reads the inventory in process, never over HTTP; a host
//! it finds presenting a key other than its pin is probed again at once.

use std::path::Path;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::runtime::absolute;
use crate::config::{Config, Override};

#[derive(clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    broker: super::broker::BrokerArgs,
    #[command(flatten)]
    gateway: super::gateway_flags::GatewayFlags,
}

impl UpArgs {
    pub fn overrides(&self) -> Vec<Override> {
        let mut o = self.broker.overrides();
        o.extend(self.gateway.overrides());
        o
    }
}

/// `virtgate up`: broker and proxy in one process, one `/metrics`.
pub async fn run(config: &Config, config_file: Option<&Path>) -> anyhow::Result<()> {
    let mut config = config.clone();
    let _lock = super::runtime::lock_data_dir(&config.broker.data_dir, "up")?;
    super::tls_check::broker_files(&config)?;
    let bootstrap = super::dev_pki::prepare_up(&mut config)?;
    let api_tls = super::broker_tls::prepare(&mut config)?;
    // The gateway in this process reads the secrets the broker writes at enrollment.
    config.proxy.agent_secret_dir.get_or_insert_with(|| {
        config
            .broker
            .data_dir
            .join(virtgate_broker::enroll::secrets::SECRET_DIR)
    });
    let files = if config.proxy.enabled {
        let files = super::proxy::tls_files(&config)?;
        super::tls_check::proxy_files(&config)?;
        Some(files)
    } else {
        None
    };
    let mut own = Vec::new();
    if let Some(f) = &files {
        own.push(("proxy_server".to_string(), f.server_cert.clone()));
        own.push(("proxy_client".to_string(), f.backend_cert.clone()));
        own.extend(f.client_cas.iter().map(|ca| ("ca".to_string(), ca.clone())));
    }
    let broker = virtgate_broker::start_with(&config.broker, &config.discovery, own)
        .await
        .context("cannot start the broker")?;
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let proxy = match files {
        Some(files) => Some(start_gateway(&config, files, &broker, &mut tasks, &shutdown).await?),
        None => None,
    };
    let published = super::broker::publish_runtime(&config, &broker, config_file, "up");
    let api = super::broker::api_url(&broker);
    println!("virtgate is up");
    if let Some(file) = config_file {
        println!("  config file     {}", absolute(file).display());
    }
    println!("  inventory API   {api}/v1/hosts");
    println!("  metrics         {api}/metrics");
    println!(
        "  data directory  {}",
        absolute(&config.broker.data_dir).display()
    );
    println!(
        "  admin token     {} (mode 0600)",
        absolute(&broker.admin_token_path).display()
    );
    print_discovery(&config);
    if let Some(p) = &proxy {
        let listen: Vec<String> = p.addresses.iter().map(|a| a.to_string()).collect();
        println!("  gateway (TLS)   {}", listen.join(", "));
    }
    if let Some(t) = &api_tls {
        t.print_usage();
    }
    match &bootstrap {
        Some(b) => b.print_usage(&config),
        None if config.proxy.enabled => super::dev_pki::print_own_usage(&config),
        None => {}
    }
    println!("  renewals        a host whose key changes is re-checked at once and shows as `changed`; `virtgate hosts approve NAME` approves the new key (hosts trusted through broker.trusted_ca_files re-pin by themselves)");
    let client = match (&published, config_file) {
        (Ok(_), _) | (Err(_), None) => "virtgate".to_string(),
        (Err(_), Some(file)) => format!("virtgate --config {}", absolute(file).display()),
    };
    if let Err(why) = &published {
        println!("  note            {why}");
    }
    println!("  try             {client} hosts   |   {client} certs --expiring 30d");
    let stopped = match &proxy {
        Some(p) => super::proxy::wait_with_reload(p).await,
        None => super::shutdown_signal().await,
    };
    info!("stopping");
    if let Some(p) = proxy {
        super::proxy::drain(p, &config.proxy).await;
    }
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    broker.shutdown().await;
    drop(published);
    info!("stopped");
    stopped
}

fn print_discovery(config: &Config) {
    if config.broker.discovery {
        println!("  LAN discovery   on (mDNS _libvirt._tcp); libvirtd has not announced itself since 5.5: on each host run `virtgate advertise` (e.g. `systemd-run --unit=virtgate-advertise virtgate advertise`), or list it under [[broker.hosts]]");
    } else {
        println!("  LAN discovery   off; hosts come from [[broker.hosts]]");
    }
}

/// The gateway's hook: every host it saw presenting a key other than its pin is probed now (the
/// scheduler rate-limits each host), so the inventory shows the new key as `changed` at once.
async fn reprobe(
    mut mismatches: tokio::sync::mpsc::Receiver<String>,
    probes: virtgate_broker::ProbeRequests,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            name = mismatches.recv() => match name {
                Some(name) => probes.request(&name),
                None => return,
            },
            () = shutdown.cancelled() => return,
        }
    }
}

/// The gateway of `up`: its host table fed by the broker's inventory, its logins by the broker's
/// users and host credentials, and key mismatches it sees re-probed at once.
async fn start_gateway(
    config: &Config,
    files: virtgate_proxy::TlsFiles,
    broker: &virtgate_broker::RunningBroker,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> anyhow::Result<virtgate_proxy::RunningProxy> {
    let (hosts, publish) =
        crate::directory::from_inventory(broker.inventory.clone(), shutdown.child_token());
    tasks.spawn(publish);
    let (users, publish) = crate::logins::from_store(
        broker.users.clone(),
        broker.epoch.clone(),
        shutdown.child_token(),
    );
    tasks.spawn(publish);
    let dir = config
        .proxy
        .host_credentials_dir
        .clone()
        .unwrap_or_else(|| broker.credentials_dir.clone());
    let logins = virtgate_proxy::auth::Logins {
        users,
        host_credentials: std::sync::Arc::new(crate::logins::DirCredentials::new(
            virtgate_api::users::CredentialsDir::at(&dir),
        )),
    };
    let mut proxy = virtgate_proxy::start_with_logins(
        &config.proxy,
        files,
        hosts,
        logins,
        broker.metrics.registry(),
    )
    .await
    .context("cannot start the proxy")?;
    if let Some(mismatches) = proxy.key_mismatches() {
        tasks.spawn(reprobe(
            mismatches,
            broker.probes.clone(),
            shutdown.child_token(),
        ));
    }
    Ok(proxy)
}
