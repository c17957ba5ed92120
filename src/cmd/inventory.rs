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
        /// The SPKI SHA-256 pin to approve (hex, `sha256:HEX` or `pin-sha256:BASE64`); it must
        /// match what the host presents now. Without it, the presented key is shown and
        /// approved only after a confirmation at a terminal.
        #[arg(long, value_name = "SHA256")]
        pin: Option<String>,
    },
    /// Remove a host, its certificate history and its metrics.
    Forget { name: String },
    /// Set (or with --remove, remove) the user name and password the gateway logs in with when
    /// the host's libvirtd demands SASL (auth_tls = "sasl"); the password is asked for without
    /// echo, or read from stdin.
    Credentials {
        name: String,
        /// The user name in the host's SASL database (`saslpasswd2 -a libvirt NAME`).
        #[arg(long, value_name = "NAME", required_unless_present = "remove")]
        user: Option<String>,
        /// Read the password from the first line of stdin instead of a prompt.
        #[arg(long)]
        password_stdin: bool,
        /// Remove the host's credentials instead.
        #[arg(long, conflicts_with_all = ["user", "password_stdin"])]
        remove: bool,
    },
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
                Some(p) => p
                    .parse::<virtgate_api::Pin>()
                    .map_err(|e| anyhow::anyhow!("--pin {p:?}: {e}"))?,
                None => confirm_presented_key(&client, &name).await?,
            };
            let host = client.approve(&name, &pin.to_string()).await?;
            println!("approved: {name} is now {}", host.trust.as_str());
        }
        Some(HostsAction::Forget { name }) => {
            api_client::admin(config, &args.client)?
                .forget(&name)
                .await?;
            println!("forgotten: {name}");
        }
        Some(HostsAction::Credentials {
            name,
            user,
            password_stdin,
            remove,
        }) => {
            let client = api_client::admin(config, &args.client)?;
            if remove {
                client.remove_host_credentials(&name).await?;
                println!("credentials removed: {name}");
            } else {
                super::users::set_host_credentials(
                    &client,
                    &name,
                    user.as_deref().unwrap_or_default(),
                    password_stdin,
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// Shows the key `name` presents now and asks the operator to confirm it; without a terminal,
/// says how to approve it with `--pin` instead. Whoever can announce on the LAN can put a key
/// in front of an unapproved host: approving must be a decision, not a keystroke.
async fn confirm_presented_key(
    client: &virtgate_api::Client,
    name: &str,
) -> anyhow::Result<virtgate_api::Pin> {
    use std::io::{BufRead, IsTerminal, Write};
    let detail = client.host(name).await?;
    let Some(pin) = detail.host.presented_pin else {
        bail!("host {name} presents no certificate yet; wait for a successful probe");
    };
    let printable = super::table::printable;
    println!("host {name} presents key sha256:{pin}");
    if let Some(leaf) = detail.host.leaf() {
        println!(
            "  certificate  {} (issuer {}, serial {}, expires {})",
            printable(&leaf.subject),
            printable(&leaf.issuer),
            leaf.serial,
            date(leaf.not_after)
        );
    }
    let addresses: Vec<String> = detail
        .host
        .endpoints
        .iter()
        .filter(|e| e.chain.first().is_some_and(|l| l.spki_sha256 == pin))
        .map(|e| e.address.to_string())
        .collect();
    println!("  presented at {}", addresses.join(", "));
    if !std::io::stdin().is_terminal() {
        bail!(
            "not approved: compare the key with the host's own (on the host: `virtgate pki check /etc/pki/libvirt` prints its pin), then run `virtgate hosts approve {name} --pin {pin}`"
        );
    }
    print!("approve this key for {name}? [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        bail!("not approved");
    }
    Ok(pin)
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

pub fn date(unix: i64) -> String {
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
        "AUTH",
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
            // What the host demands of clients (the probe's AUTH_LIST): `sasl` needs
            // `virtgate hosts credentials`.
            h.endpoints
                .iter()
                .find_map(|e| e.auth.clone())
                .unwrap_or_else(|| "-".into()),
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
