//! `virtgate proxy`: the TLS front door alone, following a broker's inventory over HTTP.

use std::convert::Infallible;
use std::sync::Arc;

use std::time::Duration;

use anyhow::Context;
use http_body_util::Full;
use hyper::body::Bytes;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use virtgate_api::{BrokerUrl, Client, Follower};
use virtgate_proxy::{RunningProxy, TlsFiles};

use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// Broker API to follow (default: http://<broker.listen>).
    #[arg(long, value_name = "URL")]
    broker: Option<String>,
}

/// The TLS files named by the configuration; every one must be set.
pub fn tls_files(config: &Config) -> anyhow::Result<TlsFiles> {
    config
        .proxy
        .tls_files(config.broker.trusted_ca_files.clone())
        .map_err(anyhow::Error::msg)
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
    let client = Client::new(BrokerUrl::parse(&url).context("--broker")?);
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let (follower, followed) = Follower::new(client);
    tasks.spawn(follower.run(shutdown.child_token()));
    // Start with the broker's inventory when it answers promptly; otherwise start anyway (every
    // host unknown) and pick it up as soon as it arrives.
    let mut first = followed.clone();
    let _ = tokio::time::timeout(FIRST_COPY_WAIT, first.wait_for(Option::is_some)).await;
    let (hosts, publish) = crate::directory::from_broker(followed.clone(), shutdown.child_token());
    tasks.spawn(publish);
    let registry = Arc::new(prometheus::Registry::new());
    let proxy = virtgate_proxy::start(&config.proxy, files, hosts, &registry)
        .await
        .context("cannot start the proxy")?;
    let listener = tokio::net::TcpListener::bind(config.proxy.metrics_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (proxy.metrics_listen)",
                config.proxy.metrics_listen
            )
        })?;
    let metrics = listener.local_addr()?;
    let ready = move || followed.borrow().is_some();
    tasks.spawn(serve_metrics(
        listener,
        registry,
        ready,
        shutdown.child_token(),
    ));
    info!(listen = ?proxy.addresses, broker = %url, metrics = %metrics, "proxy started");
    let waited = wait_with_reload(&proxy).await;
    proxy.shutdown().await;
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    waited
}

/// How long `virtgate proxy` waits for the broker's inventory before it starts listening.
const FIRST_COPY_WAIT: Duration = Duration::from_secs(5);
/// Scrapes served at once; more wait in the listen queue.
const METRICS_CONNECTIONS: usize = 64;

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

/// `/metrics`, `/healthz` and `/readyz` (ready once the broker's inventory has arrived), until
/// `shutdown`. Bounded like the broker's API: a header deadline, a cap on connections, and a
/// pause after a failed accept (out of descriptors) instead of a busy loop.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    registry: Arc<prometheus::Registry>,
    ready: impl Fn() -> bool + Clone + Send + Sync + 'static,
    shutdown: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(METRICS_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => permit.expect("never closed"),
            () = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = shutdown.cancelled() => break,
        };
        let (registry, ready) = (registry.clone(), ready.clone());
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
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
                    "/healthz" => (200, b"ok\n".to_vec()),
                    "/readyz" if ready() => (200, b"ready\n".to_vec()),
                    "/readyz" => (503, b"waiting for the broker's inventory\n".to_vec()),
                    _ => (404, b"not found\n".to_vec()),
                };
                std::future::ready(Ok::<_, Infallible>(
                    hyper::Response::builder()
                        .status(status)
                        .header("content-type", "text/plain; version=0.0.4")
                        .body(Full::new(Bytes::from(body)))
                        .expect("valid response"),
                ))
            });
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = shutdown.cancelled() => {}
            }
        });
    }
    connections.shutdown().await;
}
