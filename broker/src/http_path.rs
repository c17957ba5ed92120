//! The API's request targets, parsed without I/O: what a request asks for, from its method and
//! its target (`/v1/hosts/h1?x=y`). Every function here is pure and total — any bytes in, an
//! answer out, never a panic — so a fuzz target can call [`parse_request`] (and the helpers)
//! directly.

mod users;

use std::time::Duration;

pub use users::UsersEndpoint;

/// Largest `limit` of `GET /v1/events`.
pub const MAX_EVENTS: usize = 10_000;
/// `limit` of `GET /v1/events` when none is given.
pub const DEFAULT_EVENTS: usize = 200;
/// `timeout` of `GET /v1/watch` when none is given.
pub const DEFAULT_WATCH: Duration = Duration::from_secs(30);
/// Longest a watch request is held open, whatever it asks for.
pub const MAX_WATCH: Duration = Duration::from_secs(60);

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /`: the list of endpoints.
    Index,
    Healthz,
    Readyz,
    Metrics,
    /// `GET /v1/hosts`.
    Hosts,
    /// `GET /v1/hosts/{name}`.
    Host {
        name: String,
    },
    /// `GET /v1/certificates[?expiring_within=30d]`; an unreadable duration is kept as the
    /// error text, so the answer can say what is wrong with it.
    Certificates {
        expiring_within: Result<Option<Duration>, String>,
    },
    /// `GET /v1/events[?host=&after=&limit=]`.
    Events {
        host: Option<String>,
        after: i64,
        limit: usize,
    },
    /// `GET /v1/watch[?since=&timeout=&epoch=]`.
    Watch {
        since: u64,
        timeout: Duration,
        epoch: Option<String>,
    },
    /// `POST /v1/hosts/{name}/approve|forget`.
    Change {
        name: String,
        action: Action,
    },
    /// `POST /v1/hosts/{name}/probe`: probe the host now (rate-limited per host); readers may.
    Probe {
        name: String,
    },
    /// Enrollment of hosts through `virtgate agent` (admin token).
    Enroll(EnrollCall),
    /// Users, the gateways' users long-poll, host credentials (`users.rs`).
    Users(UsersEndpoint),
    /// A known path with a method it does not serve.
    MethodNotAllowed,
    NotFound,
}

/// The enrollment endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollCall {
    /// `GET /v1/enrollments`.
    List,
    /// `POST /v1/enrollments`.
    Create,
    /// `POST /v1/enrollments/{id}/revoke`.
    Revoke { id: String },
    /// `POST /v1/hosts/{name}/rotate`.
    Rotate { host: String },
}

/// What `POST /v1/hosts/{name}/…` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Approve,
    Forget,
}

impl Endpoint {
    /// Whether the endpoint reads the inventory (hosts, certificates, events, the watch): on a
    /// listener beyond loopback these need a client certificate or a token.
    pub fn reads_inventory(&self) -> bool {
        matches!(
            self,
            Self::Hosts
                | Self::Host { .. }
                | Self::Certificates { .. }
                | Self::Events { .. }
                | Self::Watch { .. }
                | Self::Probe { .. }
        )
    }
}

/// Parses a request: `method` as sent (`GET`, `POST`, …) and `target` (path and optional query).
/// `HEAD` is answered like `GET` (without the body).
pub fn parse_request(method: &str, target: &str) -> Endpoint {
    let method = if method == "HEAD" { "GET" } else { method };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let segments = path_segments(path);
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let param = |key| query_param(query, key);
    match (method, segments.as_slice()) {
        ("GET", [""]) => Endpoint::Index,
        ("GET", ["healthz"]) => Endpoint::Healthz,
        ("GET", ["readyz"]) => Endpoint::Readyz,
        ("GET", ["metrics"]) => Endpoint::Metrics,
        ("GET", ["v1", "hosts"]) => Endpoint::Hosts,
        ("GET", ["v1", "hosts", name]) => Endpoint::Host {
            name: (*name).to_string(),
        },
        ("GET", ["v1", "certificates"]) => Endpoint::Certificates {
            expiring_within: match param("expiring_within") {
                None => Ok(None),
                Some(text) => humantime::parse_duration(&text)
                    .map(Some)
                    .map_err(|e| e.to_string()),
            },
        },
        ("GET", ["v1", "events"]) => Endpoint::Events {
            host: param("host"),
            after: param("after").and_then(|v| v.parse().ok()).unwrap_or(0),
            limit: param("limit")
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_EVENTS)
                .min(MAX_EVENTS),
        },
        ("GET", ["v1", "watch"]) => Endpoint::Watch {
            since: param("since").and_then(|v| v.parse().ok()).unwrap_or(0),
            timeout: param("timeout")
                .and_then(|v| humantime::parse_duration(&v).ok())
                .unwrap_or(DEFAULT_WATCH)
                .min(MAX_WATCH),
            epoch: param("epoch").filter(|e| !e.is_empty()),
        },
        ("POST", ["v1", "hosts", name, action @ ("approve" | "forget")]) => Endpoint::Change {
            name: (*name).to_string(),
            action: if *action == "approve" {
                Action::Approve
            } else {
                Action::Forget
            },
        },
        ("POST", ["v1", "hosts", name, "probe"]) => Endpoint::Probe {
            name: (*name).to_string(),
        },
        ("GET", ["v1", "enrollments"]) => Endpoint::Enroll(EnrollCall::List),
        ("POST", ["v1", "enrollments"]) => Endpoint::Enroll(EnrollCall::Create),
        ("POST", ["v1", "enrollments", id, "revoke"]) => Endpoint::Enroll(EnrollCall::Revoke {
            id: (*id).to_string(),
        }),
        ("POST", ["v1", "hosts", name, "rotate"]) => Endpoint::Enroll(EnrollCall::Rotate {
            host: (*name).to_string(),
        }),
        (method, segments) if users::is_users_path(segments) => {
            users::parse(method, segments, query)
                .map_or(Endpoint::MethodNotAllowed, Endpoint::Users)
        }
        (_, segments) if is_known_path(segments) => Endpoint::MethodNotAllowed,
        _ => Endpoint::NotFound,
    }
}

fn is_known_path(segments: &[&str]) -> bool {
    matches!(
        segments,
        [""] | ["healthz" | "readyz" | "metrics"]
            | ["v1", "hosts" | "certificates" | "events" | "watch"]
            | ["v1", "hosts", _]
            | ["v1", "hosts", _, "approve" | "forget" | "probe" | "rotate"]
            | ["v1", "enrollments"]
            | ["v1", "enrollments", _, "revoke"]
    )
}

/// The path's segments, each percent-decoded; leading and trailing slashes are ignored.
pub fn path_segments(path: &str) -> Vec<String> {
    path.trim_matches('/')
        .split('/')
        .map(|s| percent_decode(s, false))
        .collect()
}

/// The percent-decoded value of the first `key=value` pair named `key` in `query` (`+` is a
/// space there, as in forms).
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| percent_decode(k, true) == key)
        .map(|(_, v)| percent_decode(v, true))
}

/// Decodes `%XX` escapes byte by byte; anything else, a `%` without two hex digits included,
/// stays as it is. With `plus_is_space`, `+` becomes a space (query strings). Bytes that do not
/// form UTF-8 after decoding become U+FFFD.
pub fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'%' {
            if let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex_digit),
                bytes.get(i + 2).copied().and_then(hex_digit),
            ) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(if plus_is_space && byte == b'+' {
            b' '
        } else {
            byte
        });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_escape_before_a_multibyte_character_is_kept_as_it_is() {
        assert_eq!(percent_decode("%aé", false), "%aé");
        assert_eq!(percent_decode("%é", true), "%é");
        assert_eq!(percent_decode("é%", false), "é%");
        assert_eq!(
            parse_request("GET", "/v1/hosts/%a\u{e9}"),
            Endpoint::Host {
                name: "%a\u{e9}".into()
            }
        );
        assert_eq!(
            parse_request("GET", "/v1/events?host=%a\u{e9}"),
            Endpoint::Events {
                host: Some("%a\u{e9}".into()),
                after: 0,
                limit: DEFAULT_EVENTS
            }
        );
    }

    #[test]
    fn escapes_decode_to_bytes_and_invalid_utf8_becomes_a_replacement_character() {
        assert_eq!(percent_decode("h1%2Eexample%2d2", false), "h1.example-2");
        assert_eq!(percent_decode("%C3%A9", false), "é");
        assert_eq!(percent_decode("%FF", false), "\u{fffd}");
        assert_eq!(percent_decode("%4", false), "%4");
        assert_eq!(percent_decode("a+b", false), "a+b");
        assert_eq!(percent_decode("a+b", true), "a b");
    }

    #[test]
    fn every_endpoint_is_recognised_with_its_parameters() {
        assert_eq!(parse_request("GET", "/healthz"), Endpoint::Healthz);
        assert_eq!(parse_request("GET", "/metrics/"), Endpoint::Metrics);
        assert_eq!(parse_request("GET", "/v1/hosts"), Endpoint::Hosts);
        assert_eq!(
            parse_request("POST", "/v1/hosts/h%201/approve"),
            Endpoint::Change {
                name: "h 1".into(),
                action: Action::Approve
            }
        );
        assert_eq!(
            parse_request("GET", "/v1/watch?since=7&timeout=2h&epoch=ab"),
            Endpoint::Watch {
                since: 7,
                timeout: MAX_WATCH,
                epoch: Some("ab".into())
            }
        );
        assert_eq!(
            parse_request("GET", "/v1/watch?epoch="),
            Endpoint::Watch {
                since: 0,
                timeout: DEFAULT_WATCH,
                epoch: None
            }
        );
        assert_eq!(
            parse_request("GET", "/v1/events?limit=99999999&after=-3"),
            Endpoint::Events {
                host: None,
                after: -3,
                limit: MAX_EVENTS
            }
        );
        assert!(matches!(
            parse_request("GET", "/v1/certificates?expiring_within=soon"),
            Endpoint::Certificates {
                expiring_within: Err(_)
            }
        ));
        assert_eq!(
            parse_request("POST", "/v1/hosts"),
            Endpoint::MethodNotAllowed
        );
        assert_eq!(parse_request("GET", "/v1/nope"), Endpoint::NotFound);
        assert_eq!(parse_request("GET", ""), Endpoint::Index);
        assert_eq!(parse_request("GET", "/"), Endpoint::Index);
        assert_eq!(parse_request("HEAD", "/metrics"), Endpoint::Metrics);
        assert_eq!(
            parse_request("POST", "/v1/hosts/h1/probe"),
            Endpoint::Probe { name: "h1".into() }
        );
        assert_eq!(
            parse_request("GET", "/v1/hosts/h1/probe"),
            Endpoint::MethodNotAllowed
        );
    }

    #[test]
    fn only_inventory_reads_need_read_access() {
        assert!(parse_request("GET", "/v1/watch").reads_inventory());
        assert!(parse_request("GET", "/v1/hosts/h1").reads_inventory());
        assert!(
            parse_request("POST", "/v1/hosts/h1/probe").reads_inventory(),
            "whoever may read may ask for a probe (a gateway that saw a new key does)"
        );
        assert!(!parse_request("GET", "/").reads_inventory());
        for open in ["/metrics", "/healthz", "/readyz"] {
            assert!(!parse_request("GET", open).reads_inventory(), "{open}");
        }
        assert!(!parse_request("POST", "/v1/hosts/h1/forget").reads_inventory());
    }
}
