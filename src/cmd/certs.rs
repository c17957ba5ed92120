//! `virtgate certs`: every certificate hosts present, and the gateway's own, soonest expiry
//! first. With `--expiring`, finding any is a result a script or a monitor acts on: exit 1.

use std::process::ExitCode;
use std::time::Duration;

use virtgate_api::CertificateRow;

use super::api_client::{self, ClientArgs};
use super::hosts::{date, days_left, list_or_dash};
use super::table::Table;
use crate::config::Config;

#[derive(clap::Args)]
pub struct CertsArgs {
    /// Only certificates expiring within this duration (e.g. 30d); exits 1 when any does.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    expiring: Option<Duration>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(config: &Config, args: CertsArgs) -> anyhow::Result<ExitCode> {
    let client = api_client::reader(config, &args.client)?;
    let certs = client.certificates(args.expiring).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&certs)?);
    } else {
        print!("{}", certs_table(&certs));
    }
    Ok(match args.expiring {
        Some(_) if !certs.is_empty() => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    })
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
            c.address.map_or_else(|| "-".into(), |a| a.to_string()),
            c.role.clone(),
            c.cert.subject_cn.clone(),
            c.cert.issuer_cn.clone(),
            c.cert.serial.clone(),
            list_or_dash(&findings),
        ]);
    }
    table.render()
}
