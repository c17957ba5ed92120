//! `virtgate enroll`: enroll a host that runs `virtgate agent` with a one-time token; list and
//! revoke tokens; rotate an enrolled host's secret. Talks to the broker's API with the admin
//! token, like `virtgate hosts approve`.

use std::time::Duration;

use anyhow::bail;
use virtgate_api::EnrollRequest;

use super::api_client::{self, ClientArgs};
use super::table::Table;
use crate::config::Config;

#[derive(clap::Args)]
#[command(after_long_help = "\
A token is <id>.<secret>: the id is public (listings, logs, the agent's mDNS announcement while \
it waits), the secret is shown once, here, and used once. The printed command carries the \
gateway's key pins: the agent refuses any other key before it says a word of the PAKE.

The broker enrolls the agent as soon as it announces itself on the LAN with the token's id (or, \
with --address, at that address): both sides then pin each other's keys, and every gateway \
connection to the host also proves a per-host secret bound to the TLS session (docs/agent.md).")]
pub struct Args {
    /// The host to enroll: the name gateways reach it by (its agent announces itself by it).
    host: Option<String>,
    /// How long the token may be used.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Where the agent listens, ADDR or ADDR:PORT, when it cannot be found over mDNS.
    #[arg(long, value_name = "ADDR")]
    address: Option<String>,
    /// List every token and where it stands.
    #[arg(long, conflicts_with_all = ["host", "revoke", "rotate"])]
    list: bool,
    /// Revoke a token that has not been used.
    #[arg(long, value_name = "ID", conflicts_with_all = ["host", "rotate"])]
    revoke: Option<String>,
    /// Replace the per-host secret of an enrolled host (and give its agent today's gateway keys,
    /// broker.agent_gateway_pins included).
    #[arg(long, value_name = "HOST", conflicts_with = "host")]
    rotate: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let client = api_client::admin(config, &args.client)?;
    if args.list {
        let tokens = client.enrollments().await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&tokens)?);
        } else {
            print!("{}", table(&tokens));
        }
        return Ok(());
    }
    if let Some(id) = args.revoke {
        let revoked = client.revoke_enrollment(&id).await?;
        println!("revoked: token {} for {}", revoked.id, revoked.host);
        return Ok(());
    }
    if let Some(host) = args.rotate {
        let rotated = client.rotate(&host).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&rotated)?);
        } else {
            println!(
                "rotated: {} now proves secret generation {}; its agent accepts {} gateway key(s)",
                rotated.host,
                rotated.generation,
                rotated.gateway_pins.len()
            );
        }
        return Ok(());
    }
    let Some(host) = args.host else {
        bail!("name the host to enroll (`virtgate enroll HOST`), or use --list, --revoke ID or --rotate HOST");
    };
    let request = EnrollRequest {
        host,
        ttl_seconds: Some(args.ttl.as_secs()),
        address: args.address,
    };
    let created = client.enroll(&request).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&created)?);
        return Ok(());
    }
    let until = super::hosts::date(created.expires_at);
    println!(
        "token {} enrolls host {} once, until {until}. Run this on {} (as root):\n",
        created.id, created.host, created.host
    );
    println!("  {}\n", created.command);
    let found = match &request.address {
        Some(a) => format!("at {a}"),
        None => "when it announces itself on the LAN (mDNS)".to_string(),
    };
    println!(
        "The broker enrolls the agent {found}; then start it as a service \
         (`systemctl enable --now virtgate-agent`). `virtgate enroll --list` shows the token's state."
    );
    Ok(())
}

fn table(tokens: &[virtgate_api::Enrollment]) -> String {
    if tokens.is_empty() {
        return "no enrollment tokens (`virtgate enroll HOST` makes one)\n".into();
    }
    let mut table = Table::new(&["ID", "HOST", "STATE", "EXPIRES", "ADDRESS", "DETAIL"]);
    for t in tokens {
        table.row(vec![
            t.id.clone(),
            t.host.clone(),
            t.state.as_str().to_string(),
            super::hosts::date(t.expires_at),
            t.address.clone().unwrap_or_else(|| "-".into()),
            t.detail.clone(),
        ]);
    }
    table.render()
}
