//! The HTTP API (`/v1/...`), `/metrics`, `/healthz`, `/readyz`. Documented in `docs/openapi.yaml`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tracing::{debug, info, warn};
use virtgate_api::{
    ApproveRequest, CertificateRow, ErrorBody, ForgetResponse, Host, HostDetail, WatchResponse,
};

use crate::inventory::{Inventory, InventoryError};
use crate::metrics::Metrics;

/// Largest request body accepted (approve bodies are ~100 bytes).
const MAX_BODY: usize = 64 * 1024;
/// Longest a watch request is held open.
const MAX_WATCH: Duration = Duration::from_secs(60);

pub struct ApiState {
    pub inventory: Arc<Inventory>,
    pub metrics: Arc<Metrics>,
    pub admin_token: String,
    pub token_path: String,
}

type Body = Full<Bytes>;

pub async fn serve(listener: TcpListener, state: Arc<ApiState>, shutdown: CancellationToken) {
    let limit = tower::limit::GlobalConcurrencyLimitLayer::new(256);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => { warn!(error = %e, "accept failed"); tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = shutdown.cancelled() => break,
        };
        let state = state.clone();
        let service = ServiceBuilder::new()
            .layer(limit.clone())
            .service(tower::service_fn(move |req| handle(state.clone(), req)));
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            tokio::select! {
                result = conn => if let Err(e) = result {
                    debug!(%peer, error = %e, "HTTP connection ended with an error");
                },
                () = shutdown.cancelled() => {}
            }
        });
    }
    // Connections (long-polls included) end with the broker.
    connections.shutdown().await;
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec_pretty(value).expect("API types serialise");
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json_response(
        status,
        &ErrorBody {
            error: message.into(),
        },
    )
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

fn query_param<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn authorized(state: &ApiState, req: &Request<Incoming>) -> bool {
    let Some(value) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(token) = value.strip_prefix("Bearer ") else {
        return false;
    };
    constant_time_eq(token.trim().as_bytes(), state.admin_token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn inventory_error(e: InventoryError) -> Response<Body> {
    let status = match &e {
        InventoryError::UnknownHost(_) => StatusCode::NOT_FOUND,
        InventoryError::NothingPresented { .. } | InventoryError::PinMismatch { .. } => {
            StatusCode::CONFLICT
        }
        InventoryError::BadPin(_) => StatusCode::BAD_REQUEST,
        InventoryError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

async fn handle(
    state: Arc<ApiState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = route(&state, req).await;
    if method == Method::POST {
        info!(%method, %path, status = response.status().as_u16(), "API request");
    } else {
        debug!(%method, %path, status = response.status().as_u16(), "API request");
    }
    Ok(response)
}

async fn route(state: &ApiState, req: Request<Incoming>) -> Response<Body> {
    let path: Vec<String> = req
        .uri()
        .path()
        .trim_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let segments: Vec<&str> = path.iter().map(String::as_str).collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, ["readyz"]) => text(StatusCode::OK, "text/plain", "ready\n".into()),
        (&Method::GET, ["metrics"]) => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            state.metrics.render(&state.inventory),
        ),
        (&Method::GET, ["v1", "hosts"]) => json_response(StatusCode::OK, &state.inventory.hosts()),
        (&Method::GET, ["v1", "hosts", name]) => match state.inventory.host(name) {
            Some(host) => {
                let detail = HostDetail {
                    host,
                    certificate_history: state
                        .inventory
                        .certificate_history(name)
                        .unwrap_or_default(),
                    events: state
                        .inventory
                        .events(Some(name), 0, 50)
                        .unwrap_or_default(),
                };
                json_response(StatusCode::OK, &detail)
            }
            None => error(
                StatusCode::NOT_FOUND,
                format!("no host named {name:?}; GET /v1/hosts lists them"),
            ),
        },
        (&Method::GET, ["v1", "certificates"]) => {
            let within = match query_param(&req, "expiring_within").map(humantime::parse_duration) {
                None => None,
                Some(Ok(d)) => Some(d),
                Some(Err(e)) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("expiring_within: {e}; use e.g. 30d"),
                    )
                }
            };
            let rows = certificate_rows(&state.inventory.hosts(), state.inventory.now(), within);
            json_response(StatusCode::OK, &rows)
        }
        (&Method::GET, ["v1", "events"]) => {
            let host = query_param(&req, "host").map(percent_decode);
            let after = query_param(&req, "after")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let limit = query_param(&req, "limit")
                .and_then(|v| v.parse().ok())
                .unwrap_or(200usize)
                .min(10_000);
            match state.inventory.events(host.as_deref(), after, limit) {
                Ok(events) => json_response(StatusCode::OK, &events),
                Err(e) => inventory_error(e),
            }
        }
        (&Method::GET, ["v1", "watch"]) => watch(state, &req).await,
        (&Method::POST, ["v1", "hosts", name, action @ ("approve" | "forget")]) => {
            let (name, action) = (name.to_string(), action.to_string());
            change(state, req, &name, &action).await
        }
        (_, segments) if is_known_path(segments) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed; see docs/openapi.yaml",
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "no such endpoint; see docs/openapi.yaml",
        ),
    }
}

/// `POST /v1/hosts/{name}/approve|forget`: the admin token first, then the body.
async fn change(
    state: &ApiState,
    req: Request<Incoming>,
    name: &str,
    action: &str,
) -> Response<Body> {
    if !authorized(state, &req) {
        return error(
            StatusCode::UNAUTHORIZED,
            format!(
                "missing or wrong bearer token; the admin token is in {}",
                state.token_path
            ),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e}")),
    };
    if action == "approve" {
        let Ok(ApproveRequest { pin }) = serde_json::from_slice(&body) else {
            return error(
                StatusCode::BAD_REQUEST,
                "body must be JSON {\"pin\": \"<SPKI SHA-256 hex>\"}",
            );
        };
        match state.inventory.approve(name, &pin) {
            Ok(host) => json_response(StatusCode::OK, &host),
            Err(e) => inventory_error(e),
        }
    } else {
        match state.inventory.forget(
            name,
            "forgotten by an operator",
            virtgate_api::EventKind::Forgotten,
        ) {
            Ok(true) => json_response(
                StatusCode::OK,
                &ForgetResponse {
                    forgotten: name.to_string(),
                },
            ),
            Ok(false) => error(StatusCode::NOT_FOUND, format!("no host named {name:?}")),
            Err(e) => inventory_error(e),
        }
    }
}

fn is_known_path(segments: &[&str]) -> bool {
    matches!(
        segments,
        ["healthz" | "readyz" | "metrics"]
            | ["v1", "hosts" | "certificates" | "events" | "watch"]
            | ["v1", "hosts", _]
            | ["v1", "hosts", _, "approve" | "forget"]
    )
}

/// Long-poll: answers as soon as the inventory revision exceeds `since`, or after `timeout`
/// (default 30 s) with the current state either way.
async fn watch(state: &ApiState, req: &Request<Incoming>) -> Response<Body> {
    let since: u64 = query_param(req, "since")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = query_param(req, "timeout")
        .and_then(|v| humantime::parse_duration(v).ok())
        .unwrap_or(Duration::from_secs(30))
        .min(MAX_WATCH);
    let mut rx = state.inventory.subscribe();
    let wait = async {
        while *rx.borrow_and_update() <= since {
            if rx.changed().await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(timeout, wait).await;
    let (revision, hosts) = state.inventory.snapshot();
    json_response(StatusCode::OK, &WatchResponse { revision, hosts })
}

/// Every certificate hosts present now, sorted by expiry; optionally only those expiring within
/// `within`. A view over the hosts, built per request.
fn certificate_rows(hosts: &[Host], now: i64, within: Option<Duration>) -> Vec<CertificateRow> {
    let mut rows = Vec::new();
    for host in hosts {
        for endpoint in &host.endpoints {
            for cert in &endpoint.chain {
                let expires_in = cert.not_after - now;
                if within.is_some_and(|w| expires_in > w.as_secs() as i64) {
                    continue;
                }
                let findings = host
                    .findings
                    .iter()
                    .filter(|f| f.certificate.as_deref() == Some(cert.sha256.as_str()))
                    .map(|f| f.kind.as_str().to_string())
                    .collect();
                let role = if cert.position == 0 {
                    "host"
                } else {
                    "host_chain"
                };
                rows.push(CertificateRow {
                    host: host.name.clone(),
                    address: endpoint.address,
                    role: role.into(),
                    cert: cert.clone(),
                    expires_in,
                    findings,
                });
            }
        }
    }
    rows.sort_by(|a, b| {
        a.cert
            .not_after
            .cmp(&b.cert.not_after)
            .then(a.host.cmp(&b.host))
    });
    rows
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
