//! What `virtgate up` and `virtgate proxy` share about the gateway: its flags (the TLS
//! listener and files, as ghostunnel and haproxy users expect them on the command line), and
//! telling a followed broker about hosts whose key changed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Override;

#[derive(clap::Args, Default)]
#[command(next_help_heading = "Gateway")]
pub struct GatewayFlags {
    /// Address of the gateway's TLS listener for libvirt clients (proxy.listen; repeatable;
    /// replaces the default 0.0.0.0:16514 and [::]:16514 — libvirtd's own port, so choose
    /// another on a hypervisor). Not the API's: that is --api-listen.
    #[arg(long, value_name = "ADDR")]
    gateway_listen: Vec<SocketAddr>,
    /// The gateway's server certificate, PEM (proxy.server_cert_file).
    #[arg(long, value_name = "FILE")]
    server_cert: Option<PathBuf>,
    /// Its key (proxy.server_key_file).
    #[arg(long, value_name = "FILE")]
    server_key: Option<PathBuf>,
    /// A CA whose client certificates are accepted (proxy.client_ca_files; repeatable, replaces).
    #[arg(long, value_name = "FILE")]
    client_ca: Vec<PathBuf>,
    /// The client certificate the gateway presents to hosts (proxy.backend_cert_file).
    #[arg(long, value_name = "FILE")]
    backend_cert: Option<PathBuf>,
    /// Its key (proxy.backend_key_file).
    #[arg(long, value_name = "FILE")]
    backend_key: Option<PathBuf>,
}

impl GatewayFlags {
    pub fn overrides(&self) -> Vec<Override> {
        let path = |p: &PathBuf| p.display().to_string();
        let mut o = Vec::new();
        if !self.gateway_listen.is_empty() {
            let list: Vec<String> = self.gateway_listen.iter().map(|a| a.to_string()).collect();
            o.push(Override::new("proxy.listen", list));
        }
        for (key, file) in [
            ("proxy.server_cert_file", &self.server_cert),
            ("proxy.server_key_file", &self.server_key),
            ("proxy.backend_cert_file", &self.backend_cert),
            ("proxy.backend_key_file", &self.backend_key),
        ] {
            if let Some(file) = file {
                o.push(Override::new(key, path(file)));
            }
        }
        if !self.client_ca.is_empty() {
            let list: Vec<String> = self.client_ca.iter().map(path).collect();
            o.push(Override::new("proxy.client_ca_files", list));
        }
        o
    }
}

/// How often one host is reported to the broker at most.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// A separate proxy's hook: each host its gateway saw presenting a key other than its pin is
/// reported to the broker (`POST /v1/hosts/{name}/probe`, allowed with the proxy's read
/// credentials), at most every [`REPORT_EVERY`] per host.
pub async fn report_mismatches(
    mut mismatches: tokio::sync::mpsc::Receiver<String>,
    broker: virtgate_api::Client,
    shutdown: CancellationToken,
) {
    let mut last: HashMap<String, Instant> = HashMap::new();
    loop {
        let name = tokio::select! {
            name = mismatches.recv() => match name { Some(n) => n, None => return },
            () = shutdown.cancelled() => return,
        };
        let now = Instant::now();
        if last
            .get(&name)
            .is_some_and(|t| now.duration_since(*t) < REPORT_EVERY)
        {
            continue;
        }
        last.retain(|_, t| now.duration_since(*t) < REPORT_EVERY);
        last.insert(name.clone(), now);
        let broker = broker.clone();
        // Not awaited here: the probe takes a while, and other hosts may need reporting.
        tokio::spawn(async move {
            match broker.probe(&name).await {
                Ok(host) => {
                    info!(host = %name, trust = host.trust.as_str(), "the broker probed a host whose key the gateway refused")
                }
                Err(e) => {
                    warn!(host = %name, error = %e, "could not ask the broker to probe a host whose key the gateway refused")
                }
            }
        });
    }
}
