//! `/v1/enrollments` and `POST /v1/hosts/{name}/rotate`: admin token only. The token is in the
//! answer to its creation and nowhere else; per-host secrets are never in any answer.

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use virtgate_api::EnrollRequest;

use super::{error, is_admin, json_response, unauthorized, ApiState, Body, MAX_BODY};
use crate::enroll::tokens::TokenError;
use crate::enroll::EnrollError;
use crate::http_path::EnrollCall;

pub(super) async fn handle(
    state: &ApiState,
    req: Request<Incoming>,
    call: EnrollCall,
) -> Response<Body> {
    if !is_admin(state, &req) {
        return unauthorized(format!(
            "enrollment needs the admin token (it is in {})",
            state.token_path
        ));
    }
    let Some(enrollments) = &state.enrollments else {
        return error(StatusCode::CONFLICT, EnrollError::NoIdentity.to_string());
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e}")),
    };
    let answer = match call {
        EnrollCall::List => return json_response(StatusCode::OK, &enrollments.list()),
        EnrollCall::Create => {
            let Ok(request) = serde_json::from_slice::<EnrollRequest>(&body) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "body must be JSON {\"host\": NAME, \"ttl_seconds\": N, \"address\": \"ADDR[:PORT]\"}",
                );
            };
            enrollments
                .create(&request)
                .map(|created| json_response(StatusCode::CREATED, &created))
        }
        EnrollCall::Revoke { id } => enrollments
            .revoke(&id)
            .map(|view| json_response(StatusCode::OK, &view)),
        EnrollCall::Rotate { host } => enrollments
            .rotate(&host)
            .await
            .map(|rotated| json_response(StatusCode::OK, &rotated)),
    };
    answer.unwrap_or_else(enroll_error)
}

fn enroll_error(e: EnrollError) -> Response<Body> {
    let status = match &e {
        EnrollError::BadHost(_) | EnrollError::BadAddress(_) | EnrollError::BadTtl => {
            StatusCode::BAD_REQUEST
        }
        EnrollError::Token(TokenError::Unknown(_))
        | EnrollError::Inventory(crate::inventory::InventoryError::UnknownHost(_)) => {
            StatusCode::NOT_FOUND
        }
        EnrollError::Unreachable { .. } => StatusCode::BAD_GATEWAY,
        EnrollError::Token(TokenError::File { .. } | TokenError::Corrupt(_))
        | EnrollError::Secret { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::CONFLICT,
    };
    error(status, e.to_string())
}
