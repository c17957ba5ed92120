//! The password endpoints: users (admin token), the gateways' users long-poll (a proxy
//! certificate, the read token or the admin token, on loopback too: verifiers are not for
//! everyone who may read the inventory), and host credentials (admin token; written to their
//! 0600 file, never answered back, never logged).

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use tracing::info;
use virtgate_api::users::{
    HostCredentialsFile, HostCredentialsRequest, HostCredentialsSet, NewUser, UserVerifiers,
};

use super::{busy, error, is_admin, json_response, may_read, unauthorized, ApiState, Body, Caller};
use crate::http_path::UsersEndpoint;
use crate::users::UsersError;

/// Longest user name or password accepted for a host.
const MAX_SECRET: usize = 1024;

pub(super) async fn handle(
    state: &ApiState,
    caller: Caller,
    endpoint: UsersEndpoint,
    req: Request<Incoming>,
) -> Response<Body> {
    if let UsersEndpoint::Snapshot {
        since,
        timeout,
        epoch,
    } = endpoint
    {
        if !may_read(state, caller, &req) {
            return unauthorized(
                "the users' verifiers are for gateways: present a client certificate issued by a \
                 CA of broker.proxy_ca_files, or `Authorization: Bearer <token>` with the read \
                 token or the admin token (`virtgate proxy --broker-token-file FILE`)"
                    .into(),
            );
        }
        let Ok(_slot) = state.watchers.try_acquire() else {
            return busy(format!(
                "{} watches are open already (broker.max_watchers); retry in a moment",
                state.max_watchers
            ));
        };
        return snapshot(state, since, timeout, epoch.as_deref()).await;
    }
    if !is_admin(state, &req) {
        return unauthorized(format!(
            "users and host credentials need the admin token; it is in {}",
            state.token_path
        ));
    }
    let wait = state.slot_wait;
    let Ok(Ok(_slot)) = tokio::time::timeout(wait, state.requests.acquire()).await else {
        return busy(format!(
            "the broker is busy (every request slot taken for more than {wait:?}); retry in a moment"
        ));
    };
    match endpoint {
        UsersEndpoint::List => json_response(StatusCode::OK, &state.users.list()),
        UsersEndpoint::Add => match body::<NewUser>(req).await {
            Ok(new) => answer(
                state.users.add(&new),
                StatusCode::CREATED,
                "user added",
                &new.name,
            ),
            Err(response) => response,
        },
        UsersEndpoint::Set { name } => match body::<UserVerifiers>(req).await {
            Ok(set) => answer(
                state.users.set(&name, &set.verifiers),
                StatusCode::OK,
                "user's password changed",
                &name,
            ),
            Err(response) => response,
        },
        UsersEndpoint::Remove { name } => answer(
            state.users.remove(&name),
            StatusCode::OK,
            "user removed",
            &name,
        ),
        UsersEndpoint::SetHostCredentials { host } => {
            match body::<HostCredentialsRequest>(req).await {
                Ok(request) => set_credentials(state, &host, request),
                Err(response) => response,
            }
        }
        UsersEndpoint::RemoveHostCredentials { host } => remove_credentials(state, &host),
        UsersEndpoint::Snapshot { .. } => unreachable!("answered above"),
    }
}

/// The request body as JSON, at most 64 KiB; or the answer saying what is wrong with it.
async fn body<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, Response<Body>> {
    let bytes = Limited::new(req.into_body(), super::MAX_BODY)
        .collect()
        .await
        .map_err(|e| error(StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "the body is not what this endpoint takes; see docs/openapi.yaml",
        )
    })
}

fn answer<T: serde::Serialize>(
    result: Result<T, UsersError>,
    ok: StatusCode,
    what: &str,
    name: &str,
) -> Response<Body> {
    match result {
        Ok(value) => {
            info!(user = name, "{what}");
            json_response(ok, &value)
        }
        Err(e) => {
            let status = match &e {
                UsersError::Exists(_) => StatusCode::CONFLICT,
                UsersError::NotFound(_) => StatusCode::NOT_FOUND,
                UsersError::Invalid(_) => StatusCode::BAD_REQUEST,
                UsersError::Io { .. } | UsersError::Corrupt { .. } => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            };
            error(status, e.to_string())
        }
    }
}

/// Long-poll: answers once the users' revision passes `since`, after `timeout`, or at once when
/// the caller followed another start of this broker.
async fn snapshot(
    state: &ApiState,
    since: u64,
    timeout: std::time::Duration,
    epoch: Option<&str>,
) -> Response<Body> {
    let restarted = epoch.is_some_and(|e| e != state.epoch);
    if !restarted {
        let mut rx = state.users.subscribe();
        let wait = async {
            while *rx.borrow_and_update() <= since {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
    }
    json_response(StatusCode::OK, &state.users.snapshot(&state.epoch))
}

fn set_credentials(
    state: &ApiState,
    host: &str,
    request: HostCredentialsRequest,
) -> Response<Body> {
    let Some(known) = state.inventory.host(host) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no host named {host:?}; GET /v1/hosts lists them"),
        );
    };
    let fits = |s: &str| !s.is_empty() && s.len() <= MAX_SECRET && !s.chars().any(char::is_control);
    if !fits(&request.user) || !fits(&request.password) {
        return error(
            StatusCode::BAD_REQUEST,
            "user and password must be 1 to 1024 characters without control characters",
        );
    }
    let file = HostCredentialsFile {
        version: 1,
        user: request.user.clone(),
        password: Some(request.password),
        salted: Vec::new(),
    };
    if let Err(e) = state.credentials.write(&known.name, &file) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "cannot write the credentials into {}: {e}; check the data directory's permissions",
                state.credentials.path().display()
            ),
        );
    }
    info!(host = %known.name, user = %request.user, "host credentials set");
    json_response(
        StatusCode::OK,
        &HostCredentialsSet {
            host: known.name,
            user: request.user,
        },
    )
}

fn remove_credentials(state: &ApiState, host: &str) -> Response<Body> {
    let user = state.credentials.user(host);
    match (state.credentials.remove(host), user) {
        (Ok(true), user) => {
            info!(host, "host credentials removed");
            json_response(
                StatusCode::OK,
                &HostCredentialsSet {
                    host: host.to_ascii_lowercase(),
                    user: user.unwrap_or_default(),
                },
            )
        }
        (Ok(false), _) => error(
            StatusCode::NOT_FOUND,
            format!("host {host:?} has no credentials; `virtgate hosts credentials {host} --user NAME` sets them"),
        ),
        (Err(e), _) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot remove the credentials: {e}")),
    }
}
