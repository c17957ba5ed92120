//! `virtgate hosts` and `virtgate certs`: the broker's inventory, readable at a glance.

use std::time::Duration;

use anyhow::bail;
use serde_json::{json, Value};

use super::api_client::{ApiClient, ClientArgs};
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
    let client = ApiClient::new(config, &args.client)?;
    match args.action {
        None => {
            let hosts = client.get("/v1/hosts").await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&hosts)?);
            } else {
                print!("{}", hosts_table(&hosts));
            }
        }
        Some(HostsAction::Approve { name, pin }) => {
            let pin = match pin {
                Some(p) => p,
                None => {
                    let detail = client.get(&format!("/v1/hosts/{}", encode(&name))).await?;
                    let Some(p) = detail["host"]["presented_pin"].as_str() else {
                        bail!(
                            "host {name} presents no certificate yet; wait for a successful probe"
                        );
                    };
                    println!("host {name} presents key {p}");
                    p.to_string()
                }
            };
            let host = client
                .post(
                    &format!("/v1/hosts/{}/approve", encode(&name)),
                    json!({ "pin": pin }),
                )
                .await?;
            println!(
                "approved: {name} is now {}",
                host["trust"].as_str().unwrap_or("?")
            );
        }
        Some(HostsAction::Forget { name }) => {
            client
                .post(&format!("/v1/hosts/{}/forget", encode(&name)), json!({}))
                .await?;
            println!("forgotten: {name}");
        }
    }
    Ok(())
}

pub async fn certs(config: &Config, args: CertsArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(config, &args.client)?;
    let path = match args.expiring {
        Some(d) => format!("/v1/certificates?expiring_within={}s", d.as_secs()),
        None => "/v1/certificates".to_string(),
    };
    let certs = client.get(&path).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&certs)?);
    } else {
        print!("{}", certs_table(&certs));
    }
    Ok(())
}

fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
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

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn hosts_table(hosts: &Value) -> String {
    let hosts = hosts.as_array().cloned().unwrap_or_default();
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
    for h in &hosts {
        let expiry = h["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["chain"][0]["not_after"].as_i64())
            .min()
            .map(|t| days_left(t - now))
            .unwrap_or_else(|| "-".into());
        let mut findings: Vec<String> = h["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["kind"].as_str().map(str::to_string))
            .collect();
        findings.dedup();
        table.row(vec![
            h["name"].as_str().unwrap_or("?").to_string(),
            h["state"].as_str().unwrap_or("?").to_string(),
            h["trust"].as_str().unwrap_or("?").to_string(),
            h["port"].to_string(),
            strs(&h["addresses"]).join(" "),
            expiry,
            if findings.is_empty() {
                "-".into()
            } else {
                findings.join(",")
            },
        ]);
    }
    table.render()
}

fn certs_table(certs: &Value) -> String {
    let certs = certs.as_array().cloned().unwrap_or_default();
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
    for c in &certs {
        let findings = strs(&c["findings"]);
        table.row(vec![
            date(c["not_after"].as_i64().unwrap_or_default()),
            days_left(c["expires_in"].as_i64().unwrap_or_default()),
            c["host"].as_str().unwrap_or("?").to_string(),
            c["address"].as_str().unwrap_or("?").to_string(),
            c["role"].as_str().unwrap_or("?").to_string(),
            c["subject_cn"].as_str().unwrap_or("").to_string(),
            c["issuer_cn"].as_str().unwrap_or("").to_string(),
            c["serial"].as_str().unwrap_or("").to_string(),
            if findings.is_empty() {
                "-".into()
            } else {
                findings.join(",")
            },
        ]);
    }
    table.render()
}
