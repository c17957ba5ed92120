//! One module per subcommand, plus what they share: the API client, the dev PKI of `up`, the
//! runtime file and data directory lock, the TLS file checks, tables.

pub mod advertise;
pub mod agent;
pub mod api_client;
pub mod broker;
pub mod broker_tls;
pub mod certs;
pub mod dev_pki;
pub mod discover;
pub mod enroll;
pub mod gateway_flags;
pub mod hosts;
pub mod man;
pub mod pki;
pub mod proxy;
pub mod runtime;
pub mod show_config;
pub mod table;
pub mod tls_check;
pub mod up;
pub mod users;

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// The machine's short host name.
pub fn system_hostname() -> String {
    let name = gethostname::gethostname().to_string_lossy().into_owned();
    name.split('.').next().unwrap_or_default().to_string()
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}
