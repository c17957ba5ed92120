//! `virtgate up`: broker, LAN discovery and the TLS gateway in one process, one `/metrics`; on
//! embedded defaults it generates a development PKI (the API's certificate included) and
//! prints how to connect. The gateway reads the inventory in process, never over HTTP.

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// `virtgate up`: broker and proxy in one process, one `/metrics`.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    let mut config = config.clone();
    let bootstrap = super::dev_pki::prepare_up(&mut config)?;
    let api_tls = super::broker_tls::prepare(&mut config)?;
    let files = if config.proxy.enabled {
        Some(super::proxy::tls_files(&config)?)
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
        Some(files) => {
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
            Some(
                virtgate_proxy::start_with_logins(
                    &config.proxy,
                    files,
                    hosts,
                    logins,
                    broker.metrics.registry(),
                )
                .await
                .context("cannot start the proxy")?,
            )
        }
        None => None,
    };
    let api = format!("{}://{}", broker.api_scheme, broker.api_addr);
    println!("virtgate is up");
    println!("  inventory API   {api}/v1/hosts");
    println!("  metrics         {api}/metrics");
    println!("  data directory  {}", config.broker.data_dir.display());
    println!(
        "  admin token     {} (mode 0600)",
        broker.admin_token_path.display()
    );
    println!(
        "  LAN discovery   {}",
        if config.broker.discovery {
            "on (mDNS _libvirt._tcp)"
        } else {
            "off"
        }
    );
    if let Some(p) = &proxy {
        let listen: Vec<String> = p.addresses.iter().map(|a| a.to_string()).collect();
        println!("  gateway (TLS)   {}", listen.join(", "));
    }
    if let Some(t) = &api_tls {
        t.print_usage();
    }
    if let Some(b) = &bootstrap {
        b.print_usage(&config);
    }
    println!("  try             virtgate hosts   |   virtgate certs --expiring 30d");
    match &proxy {
        Some(p) => super::proxy::wait_with_reload(p).await?,
        None => super::shutdown_signal().await?,
    }
    if let Some(p) = proxy {
        p.shutdown().await;
    }
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    broker.shutdown().await;
    Ok(())
}
