//! `virtgate`: one binary for the whole gateway. Subcommands map to the crates of the data path:
//! `advertise` and `discover` (discovery), `broker`, `hosts`, `certs` (broker), `up` (all in one).
#![forbid(unsafe_code)]

mod cmd;
mod config;
mod directory;
mod logging;
mod logins;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{LogFormat, Override};

#[derive(Parser)]
#[command(
    name = "virtgate",
    version,
    about = "Front door for fleets of libvirt virtualization hosts"
)]
struct Cli {
    /// TOML configuration file (default: /etc/virtgate/virtgate.toml when it exists).
    #[arg(long, global = true, env = "VIRTGATE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    /// Log filter, RUST_LOG syntax (e.g. "debug" or "info,virtgate_discovery=debug").
    #[arg(long, global = true, value_name = "FILTER")]
    log_filter: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Announce this machine as a libvirt host on the LAN (mDNS/DNS-SD) until stopped.
    Advertise(cmd::advertise::Args),
    /// List (or, with --watch, follow) the libvirt hosts announced on the LAN.
    Discover(cmd::discover::Args),
    /// Run everything in one process: broker, LAN discovery and the TLS gateway; the main job.
    Up(cmd::broker::Args),
    /// Run the broker: host and certificate inventory, HTTP API, /metrics.
    Broker(cmd::broker::Args),
    /// Run the TLS gateway alone, following a broker's inventory (--broker URL).
    Proxy(cmd::proxy::Args),
    /// List inventoried hosts; approve or forget one.
    Hosts(cmd::inventory::HostsArgs),
    /// List the certificates hosts present, soonest expiry first.
    Certs(cmd::inventory::CertsArgs),
    /// Users who may log in at the gateway with a password: add, passwd, list, remove.
    Users(cmd::users::Args),
    /// Certificates for virtgate and libvirt: a CA, server and client certificates, checks.
    Pki(cmd::pki::Args),
    /// Print the effective configuration as TOML (secrets redacted).
    Config,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("virtgate: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut overrides = Vec::new();
    if let Some(format) = cli.log_format {
        let name = match format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        overrides.push(Override::new("log.format", name));
    }
    if let Some(filter) = &cli.log_filter {
        overrides.push(Override::new("log.filter", filter.as_str()));
    }
    match &cli.command {
        Command::Advertise(args) => overrides.extend(args.overrides()),
        Command::Discover(args) => overrides.extend(args.overrides()),
        Command::Up(args) | Command::Broker(args) => overrides.extend(args.overrides()),
        Command::Hosts(_)
        | Command::Certs(_)
        | Command::Pki(_)
        | Command::Users(_)
        | Command::Proxy(_)
        | Command::Config => {}
    }
    let loaded = config::load(cli.config.as_deref(), overrides)?;
    if let Command::Config = cli.command {
        if let Some(file) = &loaded.file {
            println!("# read from {}", file.display());
        }
        print!("{}", config::to_redacted_toml(&loaded.config)?);
        return Ok(ExitCode::SUCCESS);
    }
    logging::init(&loaded.config.log)?;
    if matches!(
        cli.command,
        Command::Up(_) | Command::Broker(_) | Command::Proxy(_)
    ) {
        raise_open_files_limit(&loaded.config);
    }
    let runtime = match loaded.config.runtime.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if n > 1 {
                builder.worker_threads(n);
            }
            builder.enable_all().thread_name("virtgate").build()?
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Advertise(args) => cmd::advertise::run(&loaded.config, args).await,
            Command::Discover(args) => cmd::discover::run(&loaded.config, args).await,
            Command::Up(_) => cmd::up::run(&loaded.config).await,
            Command::Broker(_) => cmd::broker::run_broker(&loaded.config).await,
            Command::Proxy(args) => cmd::proxy::run(&loaded.config, args).await,
            Command::Hosts(args) => cmd::inventory::hosts(&loaded.config, args).await,
            Command::Certs(args) => cmd::inventory::certs(&loaded.config, args).await,
            Command::Pki(args) => cmd::pki::run(&loaded.config, args).await,
            Command::Users(args) => cmd::users::run(&loaded.config, args).await,
            Command::Config => unreachable!("handled before the runtime starts"),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Servers need two descriptors per relayed connection and more for probes and the API; the
/// usual soft limit (1024) runs out long before `proxy.max_connections`. The soft limit is raised
/// to the hard one, and the result logged.
fn raise_open_files_limit(config: &config::Config) {
    let before = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .ok();
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let needed = 2 * config.proxy.max_connections as u64 + 256;
            tracing::info!(soft_limit = limit, before = ?before, "open files limit (RLIMIT_NOFILE)");
            if config.proxy.enabled && limit < needed {
                tracing::warn!(
                    limit,
                    needed,
                    "the open files limit is below what proxy.max_connections needs; raise the hard limit (LimitNOFILE= in the systemd unit, or ulimit -Hn) or lower proxy.max_connections"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit (RLIMIT_NOFILE)"),
    }
}
