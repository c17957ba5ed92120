//! The HTTP API (`/v1/...`), `/metrics`, `/healthz`, `/readyz`, over HTTPS (or plain HTTP on
//! loopback). Documented in `docs/openapi.yaml`.
//!
//! Who may do what: `/metrics`, `/healthz` and `/readyz` are open (Prometheus scrapes them).
//! Reading the inventory needs, when [`ApiState::reads_need_auth`], a client certificate from
//! `broker.proxy_ca_files`, the read token or the admin token. Changing it needs the admin token.
//!
//! Bounds: connections at once ([`MAX_CONNECTIONS`]; more are closed at accept), a header
//! deadline, watches in their own pool (`broker.max_watchers`; a full pool answers 503 at once),
//! and every other request waits at most [`SLOT_WAIT`] for one of [`MAX_REQUESTS`] slots.

mod enroll;
mod tls;
mod users;

pub use tls::server_config;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use virtgate_api::{ApproveRequest, CertificateRow, ErrorBody, ForgetResponse, Host, HostDetail};

use crate::http_path::{self, Action, Endpoint};
use crate::inventory::{Inventory, InventoryError};
use crate::metrics::Metrics;

/// Largest request body accepted (approve bodies are ~100 bytes).
const MAX_BODY: usize = 64 * 1024;
/// Connections open at once; further ones are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 1024;
/// Requests other than watches served at once.
pub const MAX_REQUESTS: usize = 256;
/// How long a request waits for one of [`MAX_REQUESTS`] slots before it is answered 503.
pub const SLOT_WAIT: Duration = Duration::from_secs(5);
/// Budget for a client's TLS handshake, and for its request headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ApiState {
    pub inventory: Arc<Inventory>,
    pub metrics: Arc<Metrics>,
    /// Probes on request (`POST /v1/hosts/{name}/probe`, and approvals of a key not seen yet).
    pub probes: crate::service::ProbeRequests,
    /// How long a request waits for the probe it asked for.
    pub probe_wait: Duration,
    pub admin_token: String,
    /// The read token (`broker.read_token_file`), if one is configured.
    pub read_token: Option<String>,
    pub token_path: String,
    /// Random per broker start: a follower whose epoch differs resynchronises at once.
    pub epoch: String,
    /// Whether reading the inventory needs a client certificate or a token.
    pub reads_need_auth: bool,
    /// Watch long-polls held at once: `max_watchers` permits.
    pub watchers: Semaphore,
    pub max_watchers: usize,
    /// Other requests served at once.
    pub requests: Semaphore,
    /// How long a request waits for one of `requests` ([`SLOT_WAIT`]).
    pub slot_wait: Duration,
    /// Enrollment of hosts through `virtgate agent`.
    pub enrollments: Option<Arc<crate::enroll::Enrollments>>,
    /// The users who may log in at the gateway with a password.
    pub users: Arc<crate::users::UsersStore>,
    /// The gateway's credentials for hosts that demand SASL.
    pub credentials: virtgate_api::users::CredentialsDir,
}

type Body = Full<Bytes>;

/// Who is calling, as far as the connection tells.
#[derive(Debug, Clone, Copy)]
struct Caller {
    peer: SocketAddr,
    /// Presented a client certificate that verified against `broker.proxy_ca_files`.
    certified: bool,
}

/// Serves the API on `listener` until `shutdown`: HTTPS with `tls`, plain HTTP without.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<ApiState>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, limit = MAX_CONNECTIONS, "too many API connections; closing a new one");
            continue;
        };
        let (state, tls, shutdown) = (state.clone(), tls.clone(), shutdown.clone());
        connections.spawn(async move {
            let _slot = slot;
            let Some(acceptor) = tls else {
                let caller = Caller {
                    peer,
                    certified: false,
                };
                return serve_connection(stream, caller, state, shutdown).await;
            };
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => return debug!(%peer, error = %e, "API TLS handshake failed"),
                    Err(_) => return debug!(%peer, "API TLS handshake timed out"),
                };
            let certified = stream
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|chain| !chain.is_empty());
            let caller = Caller { peer, certified };
            serve_connection(stream, caller, state, shutdown).await;
        });
    }
    // Connections (long-polls included) end with the broker.
    connections.shutdown().await;
}

async fn serve_connection<IO>(
    io: IO,
    caller: Caller,
    state: Arc<ApiState>,
    shutdown: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(&state, caller, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::select! {
        result = conn => if let Err(e) = result {
            debug!(peer = %caller.peer, error = %e, "HTTP connection ended with an error");
        },
        () = shutdown.cancelled() => {}
    }
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

/// 503 with `Retry-After`: the broker is busy, not broken.
fn busy(message: String) -> Response<Body> {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, message);
    response
        .headers_mut()
        .insert(RETRY_AFTER, hyper::header::HeaderValue::from_static("1"));
    response
}

fn unauthorized(message: String) -> Response<Body> {
    let mut response = error(StatusCode::UNAUTHORIZED, message);
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        hyper::header::HeaderValue::from_static("Bearer realm=\"virtgate\""),
    );
    response
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

/// The bearer token of the request, if it sends one.
fn bearer(req: &Request<Incoming>) -> Option<&str> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    Some(value.strip_prefix("Bearer ")?.trim())
}

/// Compares the SHA-256 digests of both in constant time: neither the content nor the length
/// of the expected token shows in the timing.
fn token_matches(given: &str, expected: &str) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

fn is_admin(state: &ApiState, req: &Request<Incoming>) -> bool {
    bearer(req).is_some_and(|token| token_matches(token, &state.admin_token))
}

/// A client certificate, the read token or the admin token.
fn may_read(state: &ApiState, caller: Caller, req: &Request<Incoming>) -> bool {
    if caller.certified {
        return true;
    }
    let Some(token) = bearer(req) else {
        return false;
    };
    // Both compared, so the timing does not tell which token it was.
    let admin = token_matches(token, &state.admin_token);
    let read = state
        .read_token
        .as_deref()
        .is_some_and(|expected| token_matches(token, expected));
    admin | read
}

fn inventory_error(e: InventoryError) -> Response<Body> {
    let status = match &e {
        InventoryError::UnknownHost(_) => StatusCode::NOT_FOUND,
        InventoryError::NothingPresented { .. }
        | InventoryError::PinMismatch { .. }
        | InventoryError::AgentHost(_) => StatusCode::CONFLICT,
        InventoryError::BadPin(_) => StatusCode::BAD_REQUEST,
        InventoryError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

async fn handle(state: &ApiState, caller: Caller, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_string();
    let endpoint = http_path::parse_request(method.as_str(), &target);
    let response = admit(state, caller, endpoint, req).await;
    let path = target.split('?').next().unwrap_or_default();
    let status = response.status().as_u16();
    if method == Method::POST || status == 401 {
        info!(%method, path, status, peer = %caller.peer, "API request");
    } else {
        debug!(%method, path, status, peer = %caller.peer, "API request");
    }
    response
}

/// Authentication, then a slot from the pool the endpoint belongs to, then the answer.
async fn admit(
    state: &ApiState,
    caller: Caller,
    endpoint: Endpoint,
    req: Request<Incoming>,
) -> Response<Body> {
    if endpoint.reads_inventory() && state.reads_need_auth && !may_read(state, caller, &req) {
        return unauthorized(
            "reading the inventory here needs a client certificate issued by a CA of \
             broker.proxy_ca_files, or `Authorization: Bearer <token>` with the read token \
             (broker.read_token_file) or the admin token; `virtgate proxy` sends them with \
             --broker-token-file FILE or presents its proxy.backend_cert_file"
                .to_string(),
        );
    }
    match endpoint {
        Endpoint::Index => json_response(StatusCode::OK, &index()),
        Endpoint::Healthz => text(StatusCode::OK, "text/plain", "ok\n".into()),
        Endpoint::Readyz => text(StatusCode::OK, "text/plain", "ready\n".into()),
        Endpoint::Watch {
            since,
            timeout,
            epoch,
        } => {
            let Ok(_slot) = state.watchers.try_acquire() else {
                return busy(format!(
                    "{} watches are open already (broker.max_watchers); retry in a moment",
                    state.max_watchers
                ));
            };
            watch(state, since, timeout, epoch.as_deref()).await
        }
        Endpoint::Users(endpoint) => users::handle(state, caller, endpoint, req).await,
        endpoint => {
            let wait = state.slot_wait;
            let Ok(Ok(_slot)) = tokio::time::timeout(wait, state.requests.acquire()).await else {
                return busy(format!(
                    "the broker is busy (every request slot taken for more than {wait:?}); \
                     retry in a moment"
                ));
            };
            route(state, endpoint, req).await
        }
    }
}

async fn route(state: &ApiState, endpoint: Endpoint, req: Request<Incoming>) -> Response<Body> {
    match endpoint {
        Endpoint::Metrics => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            state.metrics.render(&state.inventory),
        ),
        Endpoint::Hosts => json_response(StatusCode::OK, &state.inventory.hosts()),
        Endpoint::Host { name } => host_detail(state, &name),
        Endpoint::Certificates { expiring_within } => match expiring_within {
            Ok(within) => {
                let now = state.inventory.now();
                let mut rows = certificate_rows(&state.inventory.hosts(), now, within);
                let own = state.metrics.own_certificates();
                rows.extend(own_rows(&own, now, state.inventory.windows(), within));
                rows.sort_by(|a, b| {
                    a.cert
                        .not_after
                        .cmp(&b.cert.not_after)
                        .then(a.host.cmp(&b.host))
                });
                json_response(StatusCode::OK, &rows)
            }
            Err(e) => error(
                StatusCode::BAD_REQUEST,
                format!("expiring_within: {e}; use e.g. 30d"),
            ),
        },
        Endpoint::Events { host, after, limit } => {
            match state.inventory.events(host.as_deref(), after, limit) {
                Ok(events) => json_response(StatusCode::OK, &events),
                Err(e) => inventory_error(e),
            }
        }
        Endpoint::Change { name, action } => change(state, req, &name, action).await,
        Endpoint::Probe { name } => probe_now(state, &name).await,
        Endpoint::Enroll(call) => enroll::handle(state, req, call).await,
        Endpoint::MethodNotAllowed => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed; see docs/openapi.yaml",
        ),
        Endpoint::NotFound
        | Endpoint::Index
        | Endpoint::Healthz
        | Endpoint::Readyz
        | Endpoint::Watch { .. }
        | Endpoint::Users(_) => error(
            StatusCode::NOT_FOUND,
            "no such endpoint; GET / lists them (docs/openapi.yaml describes each)",
        ),
    }
}

fn host_detail(state: &ApiState, name: &str) -> Response<Body> {
    match state.inventory.host(name) {
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
        None => unknown_host(name),
    }
}

fn unknown_host(name: &str) -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        format!("no host named {name:?}; `virtgate hosts` (GET /v1/hosts) lists them"),
    )
}

/// `GET /`: what this API offers, for whoever points a browser or curl at it.
fn index() -> serde_json::Value {
    let endpoints: Vec<serde_json::Value> = ENDPOINTS
        .iter()
        .map(|(method, path, what)| serde_json::json!({"method": method, "path": path, "what": what}))
        .collect();
    serde_json::json!({
        "service": "virtgate broker",
        "version": env!("CARGO_PKG_VERSION"),
        "endpoints": endpoints,
        "docs": "docs/openapi.yaml describes every endpoint; docs/broker.md says who may call which",
    })
}

/// Every endpoint: method, path, what it does.
pub const ENDPOINTS: &[(&str, &str, &str)] = &[
    (
        "GET",
        "/v1/hosts",
        "every host: state, trust, addresses, findings",
    ),
    (
        "GET",
        "/v1/hosts/{name}",
        "one host with its certificate history and recent events",
    ),
    (
        "POST",
        "/v1/hosts/{name}/probe",
        "probe the host now (rate-limited per host); answers with the host",
    ),
    (
        "POST",
        "/v1/hosts/{name}/approve",
        "approve the key the host presents (admin token; body {\"pin\": \"…\"})",
    ),
    (
        "POST",
        "/v1/hosts/{name}/forget",
        "remove the host and its history (admin token)",
    ),
    (
        "GET",
        "/v1/certificates?expiring_within=30d",
        "certificates hosts and the gateway present, soonest expiry first",
    ),
    ("GET", "/v1/events?host=&after=&limit=", "the event log"),
    (
        "GET",
        "/v1/watch?since=&epoch=&timeout=",
        "long-poll for inventory changes (proxies follow it)",
    ),
    (
        "GET",
        "/v1/enrollments",
        "enrollment tokens of hosts running `virtgate agent` (admin token)",
    ),
    (
        "POST",
        "/v1/enrollments",
        "a one-time token to enroll a host's agent (admin token)",
    ),
    (
        "POST",
        "/v1/enrollments/{id}/revoke",
        "revoke a token that has not been used (admin token)",
    ),
    (
        "POST",
        "/v1/hosts/{name}/rotate",
        "replace an enrolled host's secret (admin token)",
    ),
    (
        "GET",
        "/v1/users",
        "users who may log in at the gateway with a password (admin token)",
    ),
    (
        "POST",
        "/v1/users",
        "add a user with its SCRAM verifiers (admin token)",
    ),
    (
        "PUT",
        "/v1/users/{name}",
        "replace a user's verifiers (admin token)",
    ),
    ("DELETE", "/v1/users/{name}", "remove a user (admin token)"),
    (
        "GET",
        "/v1/gateway/users?since=&epoch=&timeout=",
        "long-poll for users (gateways follow it)",
    ),
    (
        "PUT",
        "/v1/hosts/{name}/credentials",
        "set the gateway's SASL login for a host (admin token)",
    ),
    (
        "DELETE",
        "/v1/hosts/{name}/credentials",
        "remove a host's SASL login (admin token)",
    ),
    ("GET", "/metrics", "Prometheus metrics"),
    ("GET", "/healthz", "liveness"),
    ("GET", "/readyz", "readiness"),
];

/// `POST /v1/hosts/{name}/probe`: probes the host now (or joins a probe asked for a moment ago)
/// and answers with the host as the probe left it.
async fn probe_now(state: &ApiState, name: &str) -> Response<Body> {
    if state.inventory.host(name).is_none() {
        return unknown_host(name);
    }
    if !state.probes.probe_now(name, state.probe_wait).await {
        return busy(format!(
            "the probe of {name} did not finish within {:?}; see `virtgate hosts show {name}` in a moment",
            state.probe_wait
        ));
    }
    match state.inventory.host(name) {
        Some(host) => json_response(StatusCode::OK, &host),
        None => unknown_host(name),
    }
}

/// `POST /v1/hosts/{name}/approve|forget`: the admin token first, then the body.
async fn change(
    state: &ApiState,
    req: Request<Incoming>,
    name: &str,
    action: Action,
) -> Response<Body> {
    if !is_admin(state, &req) {
        return unauthorized(format!(
            "missing or wrong bearer token; the admin token is in {}",
            state.token_path
        ));
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e}")),
    };
    match action {
        Action::Approve => {
            let Ok(ApproveRequest { pin }) = serde_json::from_slice(&body) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "body must be JSON {\"pin\": \"<SPKI SHA-256 hex>\"}",
                );
            };
            approve(state, name, &pin).await
        }
        Action::Forget => match state.inventory.forget(
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
            Ok(false) => unknown_host(name),
            Err(e) => inventory_error(e),
        },
    }
}

/// Approves `pin` for `name`. When the host presents another key (or none) as far as the
/// inventory knows, it may have just been given a new one: it is probed once, then the pin is
/// checked again — so a renewed host can be approved at once, not after the next probe round.
async fn approve(state: &ApiState, name: &str, pin: &str) -> Response<Body> {
    match state.inventory.approve(name, pin) {
        Err(InventoryError::PinMismatch { .. } | InventoryError::NothingPresented { .. }) => {
            state.probes.probe_now(name, state.probe_wait).await;
            match state.inventory.approve(name, pin) {
                Ok(host) => json_response(StatusCode::OK, &host),
                Err(e) => inventory_error(e),
            }
        }
        Ok(host) => json_response(StatusCode::OK, &host),
        Err(e) => inventory_error(e),
    }
}

/// Long-poll: answers as soon as the inventory revision exceeds `since`, or after `timeout`
/// with the current state either way — and at once when the caller names another `epoch`
/// (it followed an earlier start of this broker, whose revisions mean nothing here).
async fn watch(
    state: &ApiState,
    since: u64,
    timeout: Duration,
    epoch: Option<&str>,
) -> Response<Body> {
    let restarted = epoch.is_some_and(|e| e != state.epoch);
    if !restarted {
        let mut rx = state.inventory.subscribe();
        let wait = async {
            while *rx.borrow_and_update() <= since {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
    }
    let (revision, hosts) = state.inventory.snapshot();
    json_response(
        StatusCode::OK,
        &virtgate_api::WatchResponse {
            revision,
            hosts,
            epoch: state.epoch.clone(),
        },
    )
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
                    address: Some(endpoint.address),
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

/// The gateway's own certificates (host `virtgate`, roles `proxy_server`, `proxy_client`,
/// `ca`), with their expiry findings.
fn own_rows(
    own: &[(String, crate::cert::CertInfo)],
    now: i64,
    windows: crate::cert::Windows,
    within: Option<Duration>,
) -> Vec<CertificateRow> {
    let secs = |d: Duration| d.as_secs() as i64;
    own.iter()
        .filter(|(_, cert)| within.is_none_or(|w| cert.not_after - now <= secs(w)))
        .map(|(role, cert)| {
            let left = cert.not_after - now;
            let finding = if left <= 0 {
                Some("expired")
            } else if left < secs(windows.critical) {
                Some("expiring_critical")
            } else if left < secs(windows.warning) {
                Some("expiring_soon")
            } else {
                None
            };
            CertificateRow {
                host: "virtgate".into(),
                address: None,
                role: role.clone(),
                cert: cert.clone(),
                expires_in: left,
                findings: finding.into_iter().map(str::to_string).collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::Windows;
    use crate::config::FirstSight;
    use crate::inventory::{SystemClock, TrustPolicy};
    use crate::store::Store;
    use crate::tls::TrustAnchors;
    use virtgate_api::{BrokerUrl, Client, ClientError};

    /// The API on a loopback port with `requests` and `watchers` slots, over an empty
    /// inventory; requests wait 200 ms for a slot.
    async fn api(dir: &std::path::Path, requests: usize, watchers: usize) -> Client {
        let policy = TrustPolicy {
            windows: Windows {
                warning: Duration::from_secs(30 * 86400),
                critical: Duration::from_secs(7 * 86400),
            },
            first_sight: FirstSight::Approve,
            anchors: TrustAnchors::none(),
        };
        let store = Store::open(&dir.join("i.sqlite")).unwrap();
        let state = Arc::new(ApiState {
            inventory: Arc::new(Inventory::open(store, policy, Arc::new(SystemClock)).unwrap()),
            metrics: Arc::new(Metrics::new()),
            probes: crate::service::ProbeRequests::detached(),
            probe_wait: Duration::from_secs(1),
            admin_token: "admin".into(),
            read_token: None,
            token_path: "admin.token".into(),
            epoch: "e".into(),
            reads_need_auth: false,
            watchers: Semaphore::new(watchers),
            max_watchers: watchers,
            requests: Semaphore::new(requests),
            slot_wait: Duration::from_millis(200),
            enrollments: None,
            users: Arc::new(crate::users::UsersStore::open(dir).unwrap()),
            credentials: virtgate_api::users::CredentialsDir::open(&dir.join("creds")).unwrap(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(serve(listener, None, state, CancellationToken::new()));
        Client::new(BrokerUrl::parse(&url).unwrap())
    }

    fn busy(result: Result<impl std::fmt::Debug, ClientError>) -> bool {
        matches!(result, Err(e) if e.status() == Some(StatusCode::SERVICE_UNAVAILABLE))
    }

    #[tokio::test]
    async fn a_request_that_gets_no_slot_within_the_wait_is_answered_busy_and_watches_are_apart() {
        let dir = tempfile::tempdir().unwrap();
        // Every request slot taken: reads are told to come back; the watch has its own pool.
        let client = api(dir.path(), 0, 1).await;
        let started = tokio::time::Instant::now();
        assert!(busy(client.hosts().await));
        assert!(started.elapsed() < Duration::from_secs(2));
        let watched = client.watch(0, None, Duration::from_secs(1)).await.unwrap();
        assert_eq!(watched.epoch, "e");

        // Every watch slot taken: the watch is told at once; other reads go on.
        let client = api(dir.path(), 1, 0).await;
        let started = tokio::time::Instant::now();
        assert!(busy(client.watch(0, None, Duration::from_secs(30)).await));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(client.hosts().await.unwrap().is_empty());
    }

    #[test]
    fn tokens_match_only_when_equal() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abc", "abd"));
        assert!(!token_matches("ab", "abc"));
        assert!(!token_matches("", "abc"));
    }
}
