//! `virtgate broker`: the inventory alone (also the `--data-dir` / `--listen` flags `up` shares).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

use crate::config::{Config, Override};

#[derive(clap::Args)]
pub struct Args {
    /// Data directory (SQLite inventory, admin token, development PKI).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// API and /metrics address (beyond loopback only with broker.tls_cert_file, or in `up`).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
}

impl Args {
    pub fn overrides(&self) -> Vec<Override> {
        let mut o = Vec::new();
        if let Some(d) = &self.data_dir {
            o.push(Override::new("broker.data_dir", d.display().to_string()));
        }
        if let Some(l) = self.listen {
            o.push(Override::new("broker.listen", l.to_string()));
        }
        o
    }
}

/// `virtgate broker`: the inventory alone.
pub async fn run_broker(config: &Config) -> anyhow::Result<()> {
    let broker = virtgate_broker::start(&config.broker, &config.discovery)
        .await
        .context("cannot start the broker")?;
    super::shutdown_signal().await?;
    broker.shutdown().await;
    Ok(())
}
