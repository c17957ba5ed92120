//! tracing setup: logs go to stderr so that `--json` output on stdout stays machine-readable.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Colours only on a terminal, and never when `NO_COLOR` is set to anything non-empty
/// (no-color.org).
pub fn colour() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    std::io::stderr().is_terminal() && !no_color
}

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
        .with_ansi(colour());
    match config.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}
