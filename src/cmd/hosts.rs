//! `virtgate hosts`: the broker's inventory of hosts — the list, one host in detail, a probe
//! now, approving a key, forgetting a host.

use anyhow::bail;
use virtgate_api::{Client, Host, HostDetail, HostState, Pin, TrustState};

use super::api_client::{self, ClientArgs};
use super::table::{printable, Table};
use crate::config::Config;

#[derive(clap::Args)]
pub struct HostsArgs {
    #[command(subcommand)]
    action: Option<HostsAction>,
    /// Print JSON instead of text (any hosts command).
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(clap::Subcommand)]
enum HostsAction {
    /// One host in detail: addresses with their last probe, the certificate chain, findings with
    /// their details, both pins when its key changed, and its recent events.
    Show {
        /// The host's name, as `virtgate hosts` lists it.
        name: String,
    },
    /// Probe a host now (its key, certificates and reachability) instead of at the next round;
    /// a probe asked for a moment ago answers.
    Probe {
        /// The host's name, as `virtgate hosts` lists it.
        name: String,
    },
    /// Approve the key a host presents now (pins its SPKI SHA-256); needs the admin token.
    Approve {
        /// The host's name, as `virtgate hosts` lists it.
        name: String,
        /// The SPKI SHA-256 pin to approve: hex, sha256:HEX or pin-sha256:BASE64 (what
        /// `virtgate pki check` and `certtool --key-id --hash sha256` print on the host). It must
        /// match what the host presents; a host just given a new key is probed first. Without
        /// it, the host is probed, its key shown, and approved after a confirmation at a terminal.
        #[arg(long, value_name = "PIN")]
        pin: Option<String>,
    },
    /// Remove a host, its pin, certificate history and metrics; needs the admin token. A host
    /// still announcing itself (or configured) comes back at once as new, awaiting approval: to
    /// stop inventorying a LAN host, stop `virtgate advertise` on it or list it in
    /// broker.ignore_hosts.
    Forget {
        /// The host's name, as `virtgate hosts` lists it.
        name: String,
    },
    /// Set (or with --remove, remove) the user name and password the gateway logs in with when
    /// the host's libvirtd demands SASL (auth_tls = "sasl"); the password is asked for without
    /// echo, or read from stdin. Needs the admin token.
    Credentials {
        /// The host's name, as `virtgate hosts` lists it.
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

pub async fn run(config: &Config, args: HostsArgs) -> anyhow::Result<()> {
    let json = args.json;
    match args.action {
        None => {
            let hosts = api_client::reader(config, &args.client)?.hosts().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&hosts)?);
            } else {
                print!("{}", hosts_table(&hosts));
            }
        }
        Some(HostsAction::Show { name }) => {
            let detail = api_client::reader(config, &args.client)?
                .host(&name)
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
            } else {
                print!("{}", show(&detail, crate::cmd::now_unix()));
            }
        }
        Some(HostsAction::Probe { name }) => {
            let host = api_client::reader(config, &args.client)?
                .probe(&name)
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&host)?);
            } else {
                print!("{}", probed(&host));
            }
        }
        Some(HostsAction::Approve { name, pin }) => {
            let client = api_client::admin(config, &args.client)?;
            let pin = match pin {
                Some(p) => p
                    .parse::<Pin>()
                    .map_err(|e| crate::UsageError(format!("--pin: {e}")))?,
                None => confirm_presented_key(&client, &name).await?,
            };
            let host = client.approve(&name, &pin.to_string()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&host)?);
            } else {
                println!(
                    "approved: {name} is now {} with key sha256:{pin}; the gateway (and every proxy following this broker) connects to it",
                    host.trust.as_str()
                );
            }
        }
        Some(HostsAction::Forget { name }) => {
            let gone = api_client::admin(config, &args.client)?
                .forget(&name)
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&gone)?);
            } else {
                println!("forgotten: {name} (its pin and history are gone; if it still announces itself or is configured, it comes back as new, awaiting approval)");
            }
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

/// After `hosts probe`: the state, the trust and what to do next.
fn probed(host: &Host) -> String {
    let name = &host.name;
    let mut out = format!(
        "{name}: {}, trust {}\n",
        state_with_addresses(host),
        host.trust.as_str()
    );
    match host.trust {
        TrustState::Changed | TrustState::Pending => out.push_str(&format!(
            "  {}\n  next: `virtgate hosts show {name}`, then `virtgate hosts approve {name}` if the key is the host's\n",
            printable(&host.trust_detail)
        )),
        _ => out.push_str(&format!("  {}\n", printable(&host.trust_detail))),
    }
    out
}

/// Shows the key `name` presents now (after probing it) and asks the operator to confirm it;
/// without a terminal, says how to approve it with `--pin` instead. Whoever can announce on
/// the LAN can put a key in front of an unapproved host: approving must be a decision, not a
/// keystroke.
async fn confirm_presented_key(client: &Client, name: &str) -> anyhow::Result<Pin> {
    use std::io::{BufRead, IsTerminal, Write};
    // The key may have changed since the last probe (a renewal): look again first.
    if let Err(e) = client.probe(name).await {
        tracing::debug!(error = %e, "probe before approval failed; showing the last one");
    }
    let detail = client.host(name).await?;
    let Some(pin) = detail.host.presented_pin else {
        bail!("host {name} presents no certificate yet; `virtgate hosts show {name}` says why (is it reachable?)");
    };
    println!("host {name} presents key sha256:{pin}");
    if let Some(approved) = detail.host.pin.filter(|p| *p != pin) {
        println!("  replacing    the approved key sha256:{approved}");
    }
    if let Some(leaf) = detail.host.leaf() {
        println!("  subject      {}", printable(&leaf.subject));
        println!("  issuer       {}", printable(&leaf.issuer));
        println!("  SANs         {}", printable(&sans(leaf)));
        println!(
            "  valid        {} to {}, serial {}",
            date(leaf.not_before),
            date(leaf.not_after),
            leaf.serial
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
    print!("compare it with the host's own (`virtgate pki check` on the host prints it); approve this key for {name}? [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        bail!("not approved");
    }
    Ok(pin)
}

pub fn days_left(seconds: i64) -> String {
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

fn sans(cert: &virtgate_api::CertInfo) -> String {
    let all: Vec<String> = cert
        .dns_names
        .iter()
        .map(|d| format!("DNS:{d}"))
        .chain(cert.ip_addresses.iter().map(|i| format!("IP:{i}")))
        .collect();
    if all.is_empty() {
        "none (CN only)".into()
    } else {
        all.join(", ")
    }
}

/// `up`, or `up (1/2)` when only some addresses answered the last probe.
fn state_with_addresses(h: &Host) -> String {
    let failed = h.endpoints.iter().filter(|e| e.error.is_some()).count();
    let total = h.endpoints.len();
    if h.state == HostState::Up && failed > 0 {
        format!("up ({}/{total})", total - failed)
    } else {
        h.state.as_str().to_string()
    }
}

fn hosts_table(hosts: &[Host]) -> String {
    if hosts.is_empty() {
        return "no hosts in the inventory yet: run `virtgate advertise` on each libvirt host (libvirtd has not announced itself since 5.5), or list hosts under [[broker.hosts]]\n".into();
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
            state_with_addresses(h),
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

pub fn list_or_dash(items: &[&str]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

/// `virtgate hosts show NAME` as text.
fn show(detail: &HostDetail, now: i64) -> String {
    let h = &detail.host;
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        out.push_str(&format!("  {label:<14} {}\n", printable(&value)));
    };
    let source = match (&h.instance, h.source) {
        (Some(instance), virtgate_api::HostSource::Mdns) => format!("LAN (mDNS, {instance:?})"),
        (_, virtgate_api::HostSource::Mdns) => "LAN (mDNS)".into(),
        (_, virtgate_api::HostSource::Static) => "configured ([[broker.hosts]])".into(),
    };
    line("source", format!("{source}, port {}", h.port));
    let probe = h
        .last_probe
        .map(|t| format!(", last probe {} ({}s ago)", date(t), now - t))
        .unwrap_or_else(|| ", not probed yet".into());
    line("state", format!("{}{probe}", state_with_addresses(h)));
    line(
        "trust",
        format!("{} — {}", h.trust.as_str(), h.trust_detail),
    );
    if let Some(pin) = h.pin {
        line("approved key", format!("sha256:{pin}"));
    }
    if let Some(pin) = h.presented_pin {
        let same = if h.pin == Some(pin) {
            " (the approved one)"
        } else {
            ""
        };
        line("presented key", format!("sha256:{pin}{same}"));
    }
    for e in &h.endpoints {
        let result = match &e.error {
            Some(error) => format!("FAILED: {error}"),
            None => format!(
                "ok, {}, {:.1} ms",
                e.tls_version.as_deref().unwrap_or("TLS"),
                e.duration_ms
            ),
        };
        line("address", format!("{} {result}", e.address));
    }
    for a in &h.pending_addresses {
        line(
            "unverified",
            format!("{a} (announced; used once it presents the approved key)"),
        );
    }
    if let Some(e) = h.endpoints.iter().find(|e| !e.chain.is_empty()) {
        for c in &e.chain {
            let what = if c.position == 0 {
                "certificate"
            } else {
                "chain"
            };
            line(
                what,
                format!(
                    "{} (issuer {}), serial {}, expires {} ({}), {} {} bits, SANs {}",
                    c.subject,
                    c.issuer,
                    c.serial,
                    date(c.not_after),
                    days_left(c.not_after - now),
                    c.key_type,
                    c.key_bits,
                    sans(c)
                ),
            );
        }
    }
    if h.findings.is_empty() {
        line("findings", "none".into());
    }
    for f in &h.findings {
        line("finding", format!("{}: {}", f.kind.as_str(), f.detail));
    }
    for (k, v) in &h.txt {
        line("txt", format!("{k}={v}"));
    }
    for ev in detail.events.iter().rev().take(20).rev() {
        line(
            "event",
            format!("{} {} {}", date(ev.at), ev.kind.as_str(), ev.detail),
        );
    }
    format!("{}\n{out}", printable(&h.name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtgate_api::{Endpoint, HostSource};

    fn endpoint(address: &str, error: Option<&str>) -> Endpoint {
        Endpoint {
            address: address.parse().unwrap(),
            probed_at: 0,
            duration_ms: 1.0,
            error: error.map(str::to_string),
            error_reason: None,
            tls_version: None,
            chain: vec![],
            auth: None,
        }
    }

    #[test]
    fn a_host_reachable_on_some_addresses_only_says_so_in_the_list_and_in_show() {
        let mut h = Host::new("h1", HostSource::Mdns, 16514, vec![], 0);
        h.state = HostState::Up;
        h.endpoints = vec![
            endpoint("10.77.0.11", None),
            endpoint(
                "fd00:77::11",
                Some("cannot connect to [fd00:77::11]:16514: Connection refused"),
            ),
        ];
        assert!(hosts_table(&[h.clone()]).contains("up (1/2)"));
        let detail = HostDetail {
            host: h,
            certificate_history: vec![],
            events: vec![],
        };
        let text = show(&detail, 10);
        assert!(
            text.contains(
                "fd00:77::11 FAILED: cannot connect to [fd00:77::11]:16514: Connection refused"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_changed_key_is_shown_with_both_pins() {
        let mut h = Host::new("h1", HostSource::Static, 16514, vec![], 0);
        h.trust = TrustState::Changed;
        h.pin = Some(Pin::from_bytes([0xaa; 32]));
        h.presented_pin = Some(Pin::from_bytes([0xbb; 32]));
        let detail = HostDetail {
            host: h,
            certificate_history: vec![],
            events: vec![],
        };
        let text = show(&detail, 0);
        assert!(
            text.contains(&format!("approved key   sha256:{}", "aa".repeat(32)))
                && text.contains(&format!("presented key  sha256:{}", "bb".repeat(32))),
            "{text}"
        );
    }

    #[test]
    fn an_empty_inventory_says_hosts_must_announce_themselves() {
        assert!(hosts_table(&[]).contains("virtgate advertise"));
    }
}
