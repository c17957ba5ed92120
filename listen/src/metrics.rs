//! The plaintext `/metrics`, `/healthz` and `/readyz` endpoint: a handful of scrapers at once,
//! each given a deadline for its request header, and a pause after a failed accept so a
//! descriptor shortage does not spin.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Whether the server is ready: `None`, or why not (the `/readyz` body, with a 503).
pub type Readiness = Arc<dyn Fn() -> Option<&'static str> + Send + Sync>;

/// What one endpoint serves and how much it takes.
pub struct Endpoint {
    /// Names the server in log lines, e.g. "agent metrics".
    pub name: &'static str,
    pub registry: Arc<Registry>,
    /// Answers `/readyz`; without it `/readyz` is not served (404).
    pub readiness: Option<Readiness>,
    /// Connections served at once; the next waits to be accepted.
    pub connections: usize,
    /// How long a client may take to send its request header.
    pub header_timeout: Duration,
}

/// Serves `endpoint` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, endpoint: Endpoint, shutdown: CancellationToken) {
    let Endpoint {
        name,
        registry,
        readiness,
        connections: capacity,
        header_timeout,
    } = endpoint;
    let limit = Arc::new(Semaphore::new(capacity.max(1)));
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
                    warn!(error = %e, "{name}: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = shutdown.cancelled() => break,
        };
        let (registry, readiness) = (registry.clone(), readiness.clone());
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (status, body) = answer(req.uri().path(), &registry, readiness.as_ref());
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
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                () = shutdown.cancelled() => {}
            }
        });
    }
    connections.shutdown().await;
}

fn answer(path: &str, registry: &Registry, readiness: Option<&Readiness>) -> (u16, Vec<u8>) {
    match (path, readiness) {
        ("/metrics", _) => {
            let mut buf = Vec::new();
            let _ = prometheus::Encoder::encode(
                &prometheus::TextEncoder::new(),
                &registry.gather(),
                &mut buf,
            );
            (200, buf)
        }
        ("/healthz", _) => (200, b"ok\n".to_vec()),
        ("/readyz", Some(ready)) => match ready() {
            None => (200, b"ready\n".to_vec()),
            Some(why) => (503, why.as_bytes().to_vec()),
        },
        _ => (404, b"not found\n".to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry_with_a_counter() -> Registry {
        let registry = Registry::new();
        let counter = prometheus::IntCounter::new("spec_total", "a counter").unwrap();
        counter.inc();
        registry.register(Box::new(counter)).unwrap();
        registry
    }

    #[test]
    fn metrics_are_the_registry_in_text_form() {
        let (status, body) = answer("/metrics", &registry_with_a_counter(), None);
        assert_eq!(status, 200);
        assert!(String::from_utf8(body).unwrap().contains("spec_total 1"));
    }

    #[test]
    fn readyz_answers_only_where_readiness_is_given_and_says_why_not() {
        let registry = Registry::new();
        assert_eq!(answer("/readyz", &registry, None).0, 404);
        let waiting: Readiness = Arc::new(|| Some("waiting\n"));
        assert_eq!(
            answer("/readyz", &registry, Some(&waiting)),
            (503, b"waiting\n".to_vec())
        );
        let ready: Readiness = Arc::new(|| None);
        assert_eq!(answer("/readyz", &registry, Some(&ready)).0, 200);
    }

    #[test]
    fn anything_else_is_not_found() {
        assert_eq!(answer("/debug", &Registry::new(), None).0, 404);
        assert_eq!(answer("/healthz", &Registry::new(), None).0, 200);
    }
}
