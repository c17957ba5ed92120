//! The one client of the broker's API: typed requests and answers, bounded in time.

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::{
    ApproveRequest, CertificateRow, ErrorBody, Event, ForgetResponse, Host, HostDetail,
    WatchResponse,
};

/// How long reaching the broker (TCP connect) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an ordinary request may take, headers and body.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read: the whole inventory of a large fleet fits many times over.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url:?} is not a broker URL: {why}; use http://HOST:PORT")]
    BadUrl { url: String, why: &'static str },
    #[error("cannot reach the broker at {url}: {source}; is `virtgate up` (or `virtgate broker`) running there? (--broker URL)")]
    Connect { url: String, source: std::io::Error },
    #[error("the broker at {url} did not answer within {limit:?}")]
    Timeout { url: String, limit: Duration },
    #[error("talking to the broker at {url}: {source}")]
    Http { url: String, source: hyper::Error },
    #[error("{message} (HTTP {status})")]
    Refused { status: StatusCode, message: String },
    #[error("the broker's answer cannot be read ({0}); is --broker pointing at a virtgate broker of the same version?")]
    Decode(#[from] serde_json::Error),
    #[error("the broker's answer is larger than {MAX_ANSWER} bytes")]
    TooLarge,
}

impl ClientError {
    /// The HTTP status of a refusal, if the broker answered with one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Where the broker is: `http://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// `HOST:PORT`, as connected to and sent in `Host:`.
    authority: String,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = |why| ClientError::BadUrl {
            url: url.to_string(),
            why,
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// URLs are supported"))?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(bad("expected no path, query or user name"));
        }
        Ok(Self {
            authority: authority.to_string(),
        })
    }

    pub fn authority(&self) -> &str {
        &self.authority
    }
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

/// A client of one broker. Cheap to clone; every request is its own connection (requests are
/// rare: CLI commands, and one long-poll at a time per proxy).
#[derive(Debug, Clone)]
pub struct Client {
    url: BrokerUrl,
    token: Option<String>,
}

impl Client {
    pub fn new(url: BrokerUrl) -> Self {
        Self { url, token: None }
    }

    /// Sends `Authorization: Bearer TOKEN` with every request.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn url(&self) -> &BrokerUrl {
        &self.url
    }

    pub async fn hosts(&self) -> Result<Vec<Host>, ClientError> {
        self.get("/v1/hosts", REQUEST_TIMEOUT).await
    }

    pub async fn host(&self, name: &str) -> Result<HostDetail, ClientError> {
        let path = format!("/v1/hosts/{}", encode(name));
        self.get(&path, REQUEST_TIMEOUT).await
    }

    /// Certificates hosts present now, soonest expiry first; optionally only those expiring
    /// within `within`.
    pub async fn certificates(
        &self,
        within: Option<Duration>,
    ) -> Result<Vec<CertificateRow>, ClientError> {
        let path = match within {
            Some(d) => format!("/v1/certificates?expiring_within={}s", d.as_secs()),
            None => "/v1/certificates".to_string(),
        };
        self.get(&path, REQUEST_TIMEOUT).await
    }

    pub async fn events(
        &self,
        host: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Event>, ClientError> {
        let path = match host {
            Some(h) => format!("/v1/events?host={}&limit={limit}", encode(h)),
            None => format!("/v1/events?limit={limit}"),
        };
        self.get(&path, REQUEST_TIMEOUT).await
    }

    /// Approves `pin` for `name`; the broker refuses a pin the host does not present now.
    pub async fn approve(&self, name: &str, pin: &str) -> Result<Host, ClientError> {
        let path = format!("/v1/hosts/{}/approve", encode(name));
        let body = ApproveRequest {
            pin: pin.to_string(),
        };
        self.post(&path, &body).await
    }

    pub async fn forget(&self, name: &str) -> Result<ForgetResponse, ClientError> {
        let path = format!("/v1/hosts/{}/forget", encode(name));
        self.post(&path, &serde_json::json!({})).await
    }

    /// Long-poll: answers once the inventory's revision passes `since`, or after `timeout`.
    pub async fn watch(&self, since: u64, timeout: Duration) -> Result<WatchResponse, ClientError> {
        let path = format!("/v1/watch?since={since}&timeout={}s", timeout.as_secs());
        self.get(&path, timeout + REQUEST_TIMEOUT).await
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        limit: Duration,
    ) -> Result<T, ClientError> {
        self.request(Method::GET, path, Bytes::new(), limit).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = Bytes::from(serde_json::to_vec(body)?);
        self.request(Method::POST, path, body, REQUEST_TIMEOUT)
            .await
    }

    async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        limit: Duration,
    ) -> Result<T, ClientError> {
        let timeout = || ClientError::Timeout {
            url: self.url.to_string(),
            limit,
        };
        let exchange = self.exchange(method, path, body);
        let (status, bytes) = tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| timeout())??;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_string());
            return Err(ClientError::Refused { status, message });
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let url = self.url.to_string();
        let connect = tokio::net::TcpStream::connect(self.url.authority());
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| ClientError::Timeout {
                url: url.clone(),
                limit: CONNECT_TIMEOUT,
            })?
            .map_err(|source| ClientError::Connect {
                url: url.clone(),
                source,
            })?;
        let http = |source| ClientError::Http {
            url: url.clone(),
            source,
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.url.authority())
            .header("content-type", "application/json");
        if let Some(token) = &self.token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let request = builder
            .body(Full::new(body))
            .expect("method, path and headers are valid");
        // The connection is driven right here, beside the request: nothing outlives the call.
        let answer = async {
            let response = sender.send_request(request).await.map_err(http)?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|_| ClientError::TooLarge)?
                .to_bytes();
            Ok::<_, ClientError>((status, bytes))
        };
        let mut connection = std::pin::pin!(connection);
        let mut answer = std::pin::pin!(answer);
        let mut connection_open = true;
        loop {
            tokio::select! {
                result = &mut answer => return result,
                ended = &mut connection, if connection_open => {
                    // A connection that ends cleanly first leaves the answer to report what
                    // it got; one that fails is the error.
                    connection_open = false;
                    ended.map_err(http)?;
                }
            }
        }
    }
}

/// Percent-encodes a path segment or query value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_are_plain_http_authorities() {
        let url = BrokerUrl::parse("http://127.0.0.1:16580/").unwrap();
        assert_eq!(url.authority(), "127.0.0.1:16580");
        assert_eq!(url.to_string(), "http://127.0.0.1:16580");
        assert!(BrokerUrl::parse("127.0.0.1:16580").is_err());
        assert!(BrokerUrl::parse("http://h/v1").is_err());
        assert!(BrokerUrl::parse("http://").is_err());
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode("h1.example-2"), "h1.example-2");
        assert_eq!(encode("a b/c?"), "a%20b%2Fc%3F");
    }
}
