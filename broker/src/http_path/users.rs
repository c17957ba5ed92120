//! The password endpoints' targets (pure and total, like the rest of [`super`]): users, the
//! gateways' users long-poll, and host credentials.

use std::time::Duration;

use super::{query_param, DEFAULT_WATCH, MAX_WATCH};

/// What a password endpoint asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsersEndpoint {
    /// `GET /v1/users`.
    List,
    /// `POST /v1/users`.
    Add,
    /// `PUT /v1/users/{name}`.
    Set { name: String },
    /// `DELETE /v1/users/{name}`.
    Remove { name: String },
    /// `GET /v1/gateway/users[?since=&timeout=&epoch=]`.
    Snapshot {
        since: u64,
        timeout: Duration,
        epoch: Option<String>,
    },
    /// `PUT /v1/hosts/{name}/credentials`.
    SetHostCredentials { host: String },
    /// `DELETE /v1/hosts/{name}/credentials`.
    RemoveHostCredentials { host: String },
}

/// Whether `segments` is one of the password endpoints' paths.
pub fn is_users_path(segments: &[&str]) -> bool {
    matches!(
        segments,
        ["v1", "users"]
            | ["v1", "users", _]
            | ["v1", "gateway", "users"]
            | ["v1", "hosts", _, "credentials"]
    )
}

/// The endpoint, or `None` for a method the path does not serve.
pub fn parse(method: &str, segments: &[&str], query: Option<&str>) -> Option<UsersEndpoint> {
    let param = |key| query_param(query, key);
    Some(match (method, segments) {
        ("GET", ["v1", "users"]) => UsersEndpoint::List,
        ("POST", ["v1", "users"]) => UsersEndpoint::Add,
        ("PUT", ["v1", "users", name]) => UsersEndpoint::Set {
            name: (*name).to_string(),
        },
        ("DELETE", ["v1", "users", name]) => UsersEndpoint::Remove {
            name: (*name).to_string(),
        },
        ("GET", ["v1", "gateway", "users"]) => UsersEndpoint::Snapshot {
            since: param("since").and_then(|v| v.parse().ok()).unwrap_or(0),
            timeout: param("timeout")
                .and_then(|v| humantime::parse_duration(&v).ok())
                .unwrap_or(DEFAULT_WATCH)
                .min(MAX_WATCH),
            epoch: param("epoch").filter(|e| !e.is_empty()),
        },
        ("PUT", ["v1", "hosts", host, "credentials"]) => UsersEndpoint::SetHostCredentials {
            host: (*host).to_string(),
        },
        ("DELETE", ["v1", "hosts", host, "credentials"]) => UsersEndpoint::RemoveHostCredentials {
            host: (*host).to_string(),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{parse_request, Endpoint};
    use super::*;

    #[test]
    fn the_password_endpoints_are_recognised_and_other_methods_are_not_allowed() {
        let users = |m, t| match parse_request(m, t) {
            Endpoint::Users(e) => Some(e),
            _ => None,
        };
        assert_eq!(users("GET", "/v1/users"), Some(UsersEndpoint::List));
        assert_eq!(users("POST", "/v1/users/"), Some(UsersEndpoint::Add));
        assert_eq!(
            users("DELETE", "/v1/users/al%69ce"),
            Some(UsersEndpoint::Remove {
                name: "alice".into()
            })
        );
        assert_eq!(
            users("GET", "/v1/gateway/users?since=4&timeout=1h&epoch=e"),
            Some(UsersEndpoint::Snapshot {
                since: 4,
                timeout: MAX_WATCH,
                epoch: Some("e".into())
            })
        );
        assert_eq!(
            users("PUT", "/v1/hosts/h1/credentials"),
            Some(UsersEndpoint::SetHostCredentials { host: "h1".into() })
        );
        assert_eq!(
            parse_request("GET", "/v1/hosts/h1/credentials"),
            Endpoint::MethodNotAllowed
        );
        assert_eq!(
            parse_request("POST", "/v1/gateway/users"),
            Endpoint::MethodNotAllowed
        );
        assert!(!parse_request("GET", "/v1/gateway/users").reads_inventory());
    }
}
