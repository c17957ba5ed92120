//! tracing setup: logs go to stderr so that `--json` output on stdout stays machine-readable.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// `RUST_LOG`, when set, wins over `log.filter`.
pub fn init(config: &LogConfig) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => f,
        _ => config.filter.clone(),
    };
    let filter = EnvFilter::try_new(&filter).map_err(|e| {
        anyhow::anyhow!(
            "invalid log filter {filter:?}: {e}; use e.g. \"info,virtgate_discovery=debug\""
        )
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}
