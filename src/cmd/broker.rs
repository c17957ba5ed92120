//! `virtgate broker`: the inventory alone (also the `--data-dir` / `--api-listen` flags `up`
//! shares), and what both publish for client commands: the runtime file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tracing::{info, warn};
use virtgate_broker::RunningBroker;

use super::runtime::{absolute, Published, RuntimeInfo};
use crate::config::{Config, Override};

#[derive(clap::Args)]
pub struct BrokerArgs {
    /// Data directory: SQLite inventory, admin token, development PKI (broker.data_dir).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address of the HTTPS API and /metrics (broker.listen; beyond loopback only with
    /// broker.tls_cert_file, or in `up`). Not the gateway's: that is --gateway-listen.
    #[arg(long, value_name = "ADDR", alias = "listen")]
    api_listen: Option<SocketAddr>,
}

impl BrokerArgs {
    pub fn overrides(&self) -> Vec<Override> {
        let mut o = Vec::new();
        if let Some(d) = &self.data_dir {
            o.push(Override::new("broker.data_dir", d.display().to_string()));
        }
        if let Some(l) = self.api_listen {
            o.push(Override::new("broker.listen", l.to_string()));
        }
        o
    }
}

/// `virtgate broker`: the inventory alone.
pub async fn run_broker(config: &Config, config_file: Option<&Path>) -> anyhow::Result<()> {
    let _lock = super::runtime::lock_data_dir(&config.broker.data_dir, "broker")?;
    super::tls_check::broker_files(config)?;
    let broker = virtgate_broker::start(&config.broker, &config.discovery)
        .await
        .context("cannot start the broker")?;
    let published = publish_runtime(config, &broker, config_file, "broker");
    if let Err(why) = &published {
        warn!("{why}");
    }
    let stopped = super::shutdown_signal().await;
    info!("stopping");
    broker.shutdown().await;
    drop(published);
    info!("stopped");
    stopped
}

/// The API's base URL as a client on this machine reaches it (a wildcard address becomes
/// loopback).
pub fn api_url(broker: &RunningBroker) -> String {
    let mut addr = broker.api_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            [127, 0, 0, 1].into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    format!("{}://{addr}", broker.api_scheme)
}

/// Writes the runtime file client commands find the broker by; says why when it cannot.
pub fn publish_runtime(
    config: &Config,
    broker: &RunningBroker,
    config_file: Option<&Path>,
    command: &str,
) -> Result<Published, String> {
    let dev_ca = super::broker_tls::dev_files(&config.broker.data_dir).ca_cert;
    let (api_ca_file, api_pin) = match &config.broker.tls_cert_file {
        Some(cert) if *cert == super::broker_tls::dev_files(&config.broker.data_dir).cert => {
            (Some(absolute(&dev_ca)), None)
        }
        Some(cert) => (
            None,
            virtgate_pki::read_certs(cert)
                .ok()
                .and_then(|chain| chain.first().and_then(|c| virtgate_pki::spki_pin(c).ok()))
                .map(|pin| format!("sha256:{pin}")),
        ),
        None => (None, None),
    };
    let info = RuntimeInfo {
        pid: std::process::id(),
        command: command.to_string(),
        api: api_url(broker),
        api_ca_file,
        api_pin,
        admin_token_file: absolute(&broker.admin_token_path),
        read_token_file: config.broker.read_token_file.as_deref().map(absolute),
        data_dir: absolute(&config.broker.data_dir),
        config_file: config_file.map(absolute),
        started_at: super::now_unix(),
    };
    super::runtime::publish(&info)
}
