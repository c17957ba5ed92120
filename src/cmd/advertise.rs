//! `virtgate advertise`.

use std::time::Duration;

use anyhow::Context;
use tracing::warn;
use virtgate_discovery::{Advertiser, InterfaceSelector};

use crate::config::{Config, Override};

#[derive(clap::Args)]
pub struct Args {
    /// Host name to announce (default: this machine's short host name).
    #[arg(long)]
    hostname: Option<String>,
    /// libvirt TLS port to announce.
    #[arg(long)]
    port: Option<u16>,
    /// Only announce on interfaces matching this glob (repeatable; replaces the configured list).
    #[arg(long = "interface", value_name = "GLOB")]
    interfaces: Vec<String>,
    /// Never announce on interfaces matching this glob (repeatable; added to the configured list).
    #[arg(long = "exclude-interface", value_name = "GLOB")]
    exclude_interfaces: Vec<String>,
    /// Extra TXT entry KEY=VALUE (repeatable; informational only).
    #[arg(long = "txt", value_name = "KEY=VALUE", value_parser = parse_txt)]
    txt: Vec<(String, String)>,
}

fn parse_txt(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

impl Args {
    pub fn overrides(&self) -> Vec<Override> {
        let mut o = Vec::new();
        if let Some(h) = &self.hostname {
            o.push(Override::new("advertise.hostname", h.as_str()));
        }
        if let Some(p) = self.port {
            o.push(Override::new("advertise.port", i64::from(p)));
        }
        if !self.interfaces.is_empty() {
            o.push(Override::new(
                "discovery.interfaces.include",
                self.interfaces.clone(),
            ));
        }
        o
    }
}

/// How often interface addresses are re-read, so a DHCP renumbering is announced.
const ADDRESS_CHECK_INTERVAL: Duration = Duration::from_secs(5);

pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let mut interfaces = config.discovery.interfaces.clone();
    interfaces.exclude.extend(args.exclude_interfaces);
    let mut advertise = config.advertise.clone();
    advertise.txt.extend(args.txt);
    let selector = InterfaceSelector::new(&interfaces)?;
    let hostname = super::system_hostname();
    let mut advertiser =
        tokio::task::spawn_blocking(move || Advertiser::start(&advertise, &hostname, selector))
            .await?
            .context("cannot announce this host")?;
    let ad = advertiser.advertisement();
    let addresses: Vec<String> = ad.addresses.iter().map(|a| a.to_string()).collect();
    println!(
        "announcing \"{}\" as {} port {} on {} (Ctrl-C to withdraw)",
        ad.instance,
        ad.hostname,
        ad.port,
        addresses.join(", ")
    );

    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(ADDRESS_CHECK_INTERVAL);
    tick.tick().await;
    loop {
        tokio::select! {
            result = &mut shutdown => { result?; break; }
            _ = tick.tick() => {
                if let Err(e) = advertiser.refresh_addresses() {
                    warn!(error = %e, "could not re-read interface addresses");
                }
            }
        }
    }
    tokio::task::spawn_blocking(move || advertiser.shutdown()).await?;
    Ok(())
}
