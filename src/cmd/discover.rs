//! `virtgate discover`.

use std::time::Duration;

use anyhow::Context;
use virtgate_discovery::{Browser, DiscoveryEvent, HostAdvert};

use crate::config::{Config, Override};

#[derive(clap::Args)]
pub struct Args {
    /// How long to listen before printing the list.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print JSON (an array; with --watch, one event object per line).
    #[arg(long)]
    json: bool,
    /// Keep running and print every change (appeared / updated / removed) until stopped.
    #[arg(long)]
    watch: bool,
    /// Verify every known host this often so crashed hosts are removed (0s: never).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    verify_interval: Option<Duration>,
    /// Only browse on interfaces matching this glob (repeatable).
    #[arg(long = "interface", value_name = "GLOB")]
    interfaces: Vec<String>,
    /// Never browse on interfaces matching this glob (repeatable; added to the configured list).
    #[arg(long = "exclude-interface", value_name = "GLOB")]
    exclude_interfaces: Vec<String>,
}

impl Args {
    pub fn overrides(&self) -> Vec<Override> {
        let mut o = Vec::new();
        if let Some(d) = self.verify_interval {
            o.push(Override::new(
                "discovery.verify_interval",
                humantime::format_duration(d).to_string(),
            ));
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

pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let mut discovery = config.discovery.clone();
    discovery
        .interfaces
        .exclude
        .extend(args.exclude_interfaces.iter().cloned());
    // Browsing on no interface would wait and find nothing: say why instead.
    let usable = virtgate_discovery::InterfaceSelector::new(&discovery.interfaces)
        .and_then(|s| s.announceable_addresses())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if usable.is_empty() {
        anyhow::bail!(
            "no interface to browse on: none matches the selection (include {:?}, exclude {:?}); check `ip addr` and --interface / --exclude-interface",
            discovery.interfaces.include,
            discovery.interfaces.exclude
        );
    }
    let mut browser = tokio::task::spawn_blocking(move || Browser::start(&discovery))
        .await?
        .context("cannot browse the LAN for libvirt hosts")?;
    if args.watch {
        let shutdown = super::shutdown_signal();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                result = &mut shutdown => { result?; break; }
                event = browser.next_event() => match event {
                    Some(event) => print_event(&event, args.json)?,
                    None => break,
                },
            }
        }
    } else {
        eprintln!(
            "listening for libvirt hosts on the LAN for {} (mDNS _libvirt._tcp; --timeout)…",
            humantime::format_duration(args.timeout)
        );
        let shutdown = super::shutdown_signal();
        tokio::select! {
            result = shutdown => result?,
            _ = tokio::time::sleep(args.timeout) => {}
        }
        let hosts = browser.hosts();
        if args.json {
            println!("{}", serde_json::to_string_pretty(&hosts)?);
        } else {
            print!("{}", table(&hosts));
        }
    }
    tokio::task::spawn_blocking(move || browser.shutdown()).await?;
    Ok(())
}

use super::table::printable;

fn print_event(event: &DiscoveryEvent, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(event)?);
        return Ok(());
    }
    match event {
        DiscoveryEvent::Appeared(h) | DiscoveryEvent::Updated(h) => println!(
            "{:<9} {}  {}:{}  {}",
            event.kind(),
            printable(&h.instance),
            printable(&h.hostname),
            h.port,
            join_addresses(h)
        ),
        DiscoveryEvent::Removed { instance, .. } => {
            println!("{:<9} {}", event.kind(), printable(instance))
        }
    }
    Ok(())
}

fn join_addresses(h: &HostAdvert) -> String {
    h.addresses
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn table(hosts: &[HostAdvert]) -> String {
    if hosts.is_empty() {
        return "no libvirt hosts announced on the LAN: each host announces itself with `virtgate advertise` (libvirtd has not since 5.5); is mDNS allowed through the firewall (UDP 5353)?\n".into();
    }
    let mut table = super::table::Table::new(&["INSTANCE", "HOST", "PORT", "ADDRESSES", "TXT"]);
    for h in hosts {
        table.row(vec![
            h.instance.clone(),
            h.short_hostname().to_string(),
            h.port.to_string(),
            join_addresses(h),
            h.txt
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
        ]);
    }
    table.render()
}
