//! `virtgate hosts` and `virtgate certs`: the broker's inventory, readable at a glance.

use std::time::Duration;

use anyhow::bail;
use virtgate_api::{CertificateRow, Host};

use super::api_client::{self, ClientArgs};
use super::table::Table;
use crate::config::Config;

#[derive(clap::Args)]
pub struct HostsArgs {
    #[command(subcommand)]
    action: Option<HostsAction>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(clap::Subcommand)]
enum HostsAction {
    /// Approve the key a host presents now (pins its SPKI SHA-256).
    Approve {
        name: String,
        /// The SPKI SHA-256 pin to approve; it must match what the host presents now.
        /// Without it, the presented pin is shown and approved.
        #[arg(long, value_name = "SHA256")]
        pin: Option<String>,
    },
    /// Remove a host, its certificate history and its metrics.
    Forget { name: String },
}

#[derive(clap::Args)]
pub struct CertsArgs {
    /// Only certificates expiring within this duration (e.g. 30d).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    expiring: Option<Duration>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn hosts(config: &Config, args: HostsArgs) -> anyhow::Result<()> {
    match args.action {
        None => {
            let hosts = api_client::reader(config, &args.client)?.hosts().await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&hosts)?);
            } else {
                print!("{}", hosts_table(&hosts));
            }
        }
        Some(HostsAction::Approve { name, pin }) => {
            let client = api_client::admin(config, &args.client)?;
            let pin = match pin {
                Some(p) => p,
                None => {
                    let detail = client.host(&name).await?;
                    let Some(p) = detail.host.presented_pin else {
                        bail!(
                            "host {name} presents no certificate yet; wait for a successful probe"
                        );
                    };
                    println!("host {name} presents key {p}");
                    p.to_string()
                }
            };
            let host = client.approve(&name, &pin).await?;
            println!("approved: {name} is now {}", host.trust.as_str());
        }
        Some(HostsAction::Forget { name }) => {
            api_client::admin(config, &args.client)?
                .forget(&name)
                .await?;
            println!("forgotten: {name}");
        }
    }
    Ok(())
}

pub async fn certs(config: &Config, args: CertsArgs) -> anyhow::Result<()> {
    let client = api_client::reader(config, &args.client)?;
    let certs = client.certificates(args.expiring).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&certs)?);
    } else {
        print!("{}", certs_table(&certs));
    }
    Ok(())
}

fn days_left(seconds: i64) -> String {
    if seconds <= 0 {
        format!("EXPIRED {}d ago", -seconds / 86400)
    } else {
        format!("{:.1}d", seconds as f64 / 86400.0)
    }
}

fn date(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn hosts_table(hosts: &[Host]) -> String {
    if hosts.is_empty() {
        return "no hosts in the inventory yet (static hosts: [[broker.hosts]]; LAN hosts appear when announced)\n".into();
    }
    let now = crate::cmd::now_unix();
    let mut table = Table::new(&[
        "NAME",
        "STATE",
        "TRUST",
        "PORT",
        "ADDRESSES",
        "LEAF EXPIRES",
        "FINDINGS",
    ]);
    for h in hosts {
        let expiry = h
            .earliest_expiry()
            .map(|t| days_left(t - now))
            .unwrap_or_else(|| "-".into());
        let mut findings: Vec<&str> = h.findings.iter().map(|f| f.kind.as_str()).collect();
        findings.dedup();
        let addresses: Vec<String> = h.addresses.iter().map(|a| a.to_string()).collect();
        table.row(vec![
            h.name.clone(),
            h.state.as_str().to_string(),
            h.trust.as_str().to_string(),
            h.port.to_string(),
            addresses.join(" "),
            expiry,
            list_or_dash(&findings),
        ]);
    }
    table.render()
}

fn certs_table(certs: &[CertificateRow]) -> String {
    if certs.is_empty() {
        return "no certificates match\n".into();
    }
    let mut table = Table::new(&[
        "NOT AFTER",
        "LEFT",
        "HOST",
        "ADDRESS",
        "ROLE",
        "SUBJECT CN",
        "ISSUER CN",
        "SERIAL",
        "FINDINGS",
    ]);
    for c in certs {
        let findings: Vec<&str> = c.findings.iter().map(String::as_str).collect();
        table.row(vec![
            date(c.cert.not_after),
            days_left(c.expires_in),
            c.host.clone(),
            c.address.to_string(),
            c.role.clone(),
            c.cert.subject_cn.clone(),
            c.cert.issuer_cn.clone(),
            c.cert.serial.clone(),
            list_or_dash(&findings),
        ]);
    }
    table.render()
}

fn list_or_dash(items: &[&str]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}
