//! `virtgate broker` and `virtgate up`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

use crate::config::{Config, Override};

#[derive(clap::Args)]
pub struct Args {
    /// Data directory (SQLite inventory, admin token).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// HTTP API and /metrics address.
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

/// Runs the broker until SIGINT/SIGTERM. `up` also prints where everything is.
pub async fn run(config: &Config, announce: bool) -> anyhow::Result<()> {
    let broker = virtgate_broker::start(&config.broker, &config.discovery)
        .await
        .context("cannot start the broker")?;
    if announce {
        let api = broker.api_addr;
        println!("virtgate is up");
        println!("  inventory API   http://{api}/v1/hosts");
        println!("  metrics         http://{api}/metrics");
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
        println!("  try             virtgate hosts   |   virtgate certs --expiring 30d");
    }
    super::shutdown_signal().await?;
    broker.shutdown().await;
    Ok(())
}
