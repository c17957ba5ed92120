//! `virtgate proxy`: the TLS front door alone, following a broker's inventory over HTTP.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use http_body_util::Full;
use hyper::body::Bytes;
use tracing::{info, warn};
use virtgate_proxy::{RunningProxy, TlsFiles, WatchedDirectory};

use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// Broker API to follow (default: http://<broker.listen>).
    #[arg(long, value_name = "URL")]
    broker: Option<String>,
}

/// The TLS files named by the configuration; every one must be set.
pub fn tls_files(config: &Config) -> anyhow::Result<TlsFiles> {
    let p = &config.proxy;
    let need = |v: &Option<std::path::PathBuf>, key: &str| {
        v.clone().with_context(|| format!("proxy.{key} is not set; set it (see docs/proxy.md), or use `virtgate up`, which generates a development PKI"))
    };
    if p.client_ca_files.is_empty() {
        anyhow::bail!(
            "proxy.client_ca_files is empty; list the CA(s) whose client certificates may connect"
        );
    }
    Ok(TlsFiles {
        server_cert: need(&p.server_cert_file, "server_cert_file")?,
        server_key: need(&p.server_key_file, "server_key_file")?,
        client_cas: p.client_ca_files.clone(),
        crl: p.crl_file.clone(),
        backend_cert: need(&p.backend_cert_file, "backend_cert_file")?,
        backend_key: need(&p.backend_key_file, "backend_key_file")?,
        backend_cas: config.broker.trusted_ca_files.clone(),
    })
}

pub fn broker_url(config: &Config, explicit: Option<String>) -> String {
    explicit.unwrap_or_else(|| {
        let mut listen = config.broker.listen;
        if listen.ip().is_unspecified() {
            listen.set_ip(if listen.is_ipv4() {
                [127, 0, 0, 1].into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        format!("http://{listen}")
    })
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let files = tls_files(config)?;
    let url = broker_url(config, args.broker);
    let directory = WatchedDirectory::follow(&url, std::time::Duration::from_secs(5)).await;
    let registry = Arc::new(prometheus::Registry::new());
    let proxy = virtgate_proxy::start(&config.proxy, files, directory, &registry)
        .await
        .context("cannot start the proxy")?;
    let metrics = serve_metrics(config.proxy.metrics_listen, registry).await?;
    info!(listen = ?proxy.addresses, broker = %url, metrics = %metrics, "proxy started");
    wait_with_reload(&proxy).await?;
    proxy.shutdown().await;
    Ok(())
}

/// Waits for SIGINT/SIGTERM; SIGHUP re-reads the TLS files.
pub async fn wait_with_reload(proxy: &RunningProxy) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let stop = super::shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            r = &mut stop => return r,
            _ = hup.recv() => match proxy.reload_tls() {
                Ok(()) => info!("SIGHUP: TLS certificates and keys reloaded"),
                Err(e) => warn!(error = %e, "SIGHUP: reload failed; the previous TLS material stays in use"),
            },
        }
    }
}

async fn serve_metrics(
    addr: SocketAddr,
    registry: Arc<prometheus::Registry>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (proxy.metrics_listen)"))?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let registry = registry.clone();
                        async move {
                            let (status, body) = match req.uri().path() {
                                "/metrics" => {
                                    let mut buf = Vec::new();
                                    let _ = prometheus::Encoder::encode(
                                        &prometheus::TextEncoder::new(),
                                        &registry.gather(),
                                        &mut buf,
                                    );
                                    (200, buf)
                                }
                                "/healthz" | "/readyz" => (200, b"ok\n".to_vec()),
                                _ => (404, b"not found\n".to_vec()),
                            };
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "text/plain; version=0.0.4")
                                    .body(Full::new(Bytes::from(body)))
                                    .expect("valid response"),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(local)
}
