//! `virtgate`: one binary for the whole gateway. Subcommands map to the crates of the data path:
//! `advertise` and `discover` (discovery), `broker`, `hosts`, `certs` (broker), `up` (all in one).
//!
//! Exit codes: 0 done; 1 a runtime failure, or a check that found problems (`pki check`, `certs
//! --expiring` listing certificates); 2 a usage or configuration error.
#![forbid(unsafe_code)]

mod cmd;
mod config;
mod directory;
mod logging;
mod logins;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::{LogFormat, Override};

/// `0.1.0 (commit abcdef123456, built 2026-01-01)`.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("VIRTGATE_COMMIT"),
    ", built ",
    env!("VIRTGATE_BUILD_DATE"),
    ")"
);

const GLOBAL: &str = "Global options";

#[derive(Parser)]
#[command(
    name = "virtgate",
    version = VERSION,
    about = "Front door for fleets of libvirt virtualization hosts",
    after_help = "Exit status: 0 done; 1 runtime failure, or a check found problems; 2 usage or configuration error."
)]
struct Cli {
    /// TOML configuration file (default: /etc/virtgate/virtgate.toml when it exists; client
    /// commands first look for the running broker's runtime file).
    #[arg(long, global = true, env = "VIRTGATE_CONFIG", value_name = "FILE", help_heading = GLOBAL)]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, help_heading = GLOBAL)]
    log_format: Option<LogFormat>,
    /// Log filter, RUST_LOG syntax (e.g. "debug" or "info,virtgate_discovery=debug").
    #[arg(long, global = true, value_name = "FILTER", help_heading = GLOBAL)]
    log_filter: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Announce this machine as a libvirt host on the LAN (mDNS/DNS-SD) until stopped; run it on
    /// every libvirt host (libvirtd stopped announcing itself in 5.5).
    Advertise(cmd::advertise::Args),
    /// List (or, with --watch, follow) the libvirt hosts announced on the LAN.
    Discover(cmd::discover::Args),
    /// Run everything in one process: broker, LAN discovery and the TLS gateway; the main job.
    Up(cmd::up::UpArgs),
    /// Run the broker: host and certificate inventory, HTTPS API, /metrics.
    Broker(cmd::broker::BrokerArgs),
    /// Run the TLS gateway alone, following a broker's inventory (--broker URL).
    Proxy(cmd::proxy::Args),
    /// List inventoried hosts; show, probe, approve or forget one.
    Hosts(cmd::hosts::HostsArgs),
    /// List the certificates hosts and the gateway present, soonest expiry first.
    Certs(cmd::certs::CertsArgs),
    /// Users who may log in at the gateway with a password: add, passwd, list, remove.
    Users(cmd::users::Args),
    /// Certificates for virtgate and libvirt: a CA, server and client certificates, checks.
    Pki(cmd::pki::Args),
    /// Run the host agent on a libvirt host: enroll it once (--enroll), then serve the gateway.
    Agent(cmd::agent::Args),
    /// Enroll a host running `virtgate agent`; list or revoke tokens; rotate a host's secret.
    Enroll(cmd::enroll::Args),
    /// Print the effective configuration as TOML (secrets redacted; unset keys as comments).
    Config(cmd::show_config::Args),
    /// Print a shell completion script: `virtgate completion bash > /etc/bash_completion.d/virtgate`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (virtgate.1 and one per command) into DIR, or print virtgate.1.
    Man {
        /// Directory to write the pages into, e.g. /usr/local/share/man/man1.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// A failure that is the caller's to fix in how virtgate was called or configured: exit 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn main() -> ExitCode {
    stop_quietly_when_the_reader_is_gone();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("virtgate: {}", describe(&e));
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// `virtgate hosts | head -1`: once the reader is gone, every `println!` fails, and Rust turns
/// that into a panic with a backtrace. A Unix filter just stops there, quietly and successfully
/// (the reader got what it wanted). std offers no typed error here, only this panic's message.
fn stop_quietly_when_the_reader_is_gone() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map_or("", String::as_str);
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// The error and its causes, each cause only when the text so far does not already say it
/// (errors here often quote their source: "… (os error 98); choose another …").
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

fn overrides(cli: &Cli) -> Vec<Override> {
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
        Command::Up(args) => overrides.extend(args.overrides()),
        Command::Broker(args) => overrides.extend(args.overrides()),
        Command::Proxy(args) => overrides.extend(args.overrides()),
        Command::Agent(args) => overrides.extend(args.overrides()),
        _ => {}
    }
    overrides
}

/// Client commands started without `--config` or `--broker` talk to the broker this machine
/// runs: the one its runtime file names (with that broker's configuration file).
fn running_broker(cli: &Cli) -> Option<cmd::runtime::RuntimeInfo> {
    let broker_given = match &cli.command {
        Command::Hosts(a) => a.client.broker.is_some(),
        Command::Certs(a) => a.client.broker.is_some(),
        Command::Users(a) => a.client.broker.is_some(),
        Command::Enroll(a) => a.client.broker.is_some(),
        Command::Pki(_) => false,
        _ => return None,
    };
    if cli.config.is_some() || broker_given {
        return None;
    }
    cmd::runtime::find()
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Completion { shell } => {
            // Into a buffer first: clap_complete panics when stdout is a closed pipe.
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "virtgate", &mut script);
            cmd::man::print(&script)
                .map_err(|e| anyhow::anyhow!("cannot print the completion script: {e}"))?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man { out } => {
            cmd::man::write(Cli::command(), out.as_deref())?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let mut overrides = overrides(&cli);
    let running = running_broker(&cli);
    let mut file = cli.config.clone();
    if let Some(info) = &running {
        file = info.config_file.clone().filter(|f| f.is_file());
        overrides.push(Override::new(
            "broker.data_dir",
            info.data_dir.display().to_string(),
        ));
    }
    let loaded = config::load(file.as_deref(), overrides)
        .map_err(|e| anyhow::Error::new(UsageError(format!("{e:#}"))))?;
    for name in config::unknown_sections() {
        eprintln!(
            "virtgate: warning: {name} is not read: its section is none of log, discovery, advertise, broker, proxy, runtime (misspelled?)"
        );
    }
    if let Some(info) = running {
        cmd::runtime::remember(info);
    }
    if let Command::Config(args) = &cli.command {
        cmd::show_config::run(&loaded, args)?;
        return Ok(ExitCode::SUCCESS);
    }
    logging::init(&loaded.config.log)?;
    if matches!(
        cli.command,
        Command::Up(_) | Command::Broker(_) | Command::Proxy(_) | Command::Agent(_)
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
    let config_file = loaded.file.clone();
    runtime.block_on(async move {
        let config = &loaded.config;
        let done = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
        match cli.command {
            Command::Advertise(args) => done(cmd::advertise::run(config, args).await),
            Command::Discover(args) => done(cmd::discover::run(config, args).await),
            Command::Up(_) => done(cmd::up::run(config, config_file.as_deref()).await),
            Command::Broker(_) => {
                done(cmd::broker::run_broker(config, config_file.as_deref()).await)
            }
            Command::Proxy(args) => done(cmd::proxy::run(config, args).await),
            Command::Hosts(args) => done(cmd::hosts::run(config, args).await),
            Command::Certs(args) => cmd::certs::run(config, args).await,
            Command::Pki(args) => cmd::pki::run(config, args).await,
            Command::Users(args) => done(cmd::users::run(config, args).await),
            Command::Agent(args) => done(cmd::agent::run(config, args).await),
            Command::Enroll(args) => done(cmd::enroll::run(config, args).await),
            Command::Config(_) | Command::Completion { .. } | Command::Man { .. } => {
                unreachable!("handled before the runtime starts")
            }
        }
    })
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
            match before {
                Some(before) => tracing::info!(
                    soft_limit = limit,
                    before,
                    "open files limit (RLIMIT_NOFILE)"
                ),
                None => tracing::info!(soft_limit = limit, "open files limit (RLIMIT_NOFILE)"),
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_have_their_own_help_heading() {
        let mut cmd = Cli::command();
        cmd.build();
        let help = cmd
            .find_subcommand_mut("advertise")
            .unwrap()
            .render_help()
            .to_string();
        let global = help
            .find("Global options:")
            .expect("a Global options block");
        for flag in ["--config", "--log-format", "--log-filter"] {
            assert!(
                help.rfind(flag).unwrap() > global,
                "{flag} under Global options:\n{help}"
            );
        }
        assert!(help.find("--hostname").unwrap() < global, "{help}");
    }

    #[test]
    fn causes_already_quoted_by_an_error_are_not_repeated() {
        let os = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let e = anyhow::Error::new(os).context(format!(
            "cannot listen on 0.0.0.0:16514: {}; choose another proxy.listen address",
            std::io::Error::from(std::io::ErrorKind::AddrInUse)
        ));
        let text = describe(&e);
        assert_eq!(text.matches("in use").count(), 1, "{text}");
    }
}
