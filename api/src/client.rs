//! The one client of the broker's API: typed requests and answers, bounded in time.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::{
    ApproveRequest, CertificateRow, ErrorBody, Event, ForgetResponse, Host, HostDetail,
    WatchResponse,
};
use crate::tls::{BrokerTrust, ClientIdentity};

/// How long reaching the broker (TCP connect) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an ordinary request may take, headers and body.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read: the whole inventory of a large fleet fits many times over.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url:?} is not a broker URL: {why}; use https://HOST:PORT (or http://127.0.0.1:PORT for a broker on this machine)")]
    BadUrl { url: String, why: &'static str },
    #[error(
        "{url}: plain http:// is accepted only for a broker on loopback, because whoever sits \
         between here and the broker could rewrite the inventory and the pins this client \
         trusts; serve the broker's API over HTTPS (broker.tls_cert_file and tls_key_file, or \
         `virtgate up`, which issues a development certificate) and use https://HOST:PORT with \
         --broker-ca FILE or --broker-pin sha256:…"
    )]
    PlainHttpBeyondLoopback { url: String },
    #[error(
        "nothing to verify the broker's certificate with: pass --broker-ca FILE (the CA that \
         issued it; proxy.broker_ca_file) or --broker-pin sha256:… (its key's pin; \
         proxy.broker_pin)"
    )]
    NoTrust,
    #[error("TLS towards the broker: {0}")]
    TlsSetup(String),
    #[error(transparent)]
    Pem(#[from] virtgate_pki::PemError),
    #[error("cannot reach the broker at {url}: {source}; is `virtgate up` (or `virtgate broker`) running there? (--broker URL)")]
    Connect { url: String, source: std::io::Error },
    #[error(
        "TLS with the broker at {url} failed: {reason}; check --broker-ca / --broker-pin (the \
         broker's certificate must come from that CA and cover the URL's host name, or carry \
         that pin) and that the broker serves HTTPS there"
    )]
    Tls { url: String, reason: String },
    #[error("the broker at {url} did not answer within {limit:?}")]
    Timeout { url: String, limit: Duration },
    #[error("talking to the broker at {url}: {source}; is that the broker's API (broker.listen, port 16580 by default) and not the gateway's TLS port?")]
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

/// How the API is spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// Where the broker is: `https://HOST[:PORT]`, or `http://` with a loopback host. The port
/// defaults to 16580.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    scheme: Scheme,
    /// Without brackets.
    host: String,
    port: u16,
}

/// The broker's port when a URL names none.
pub const DEFAULT_PORT: u16 = 16580;

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = |why| ClientError::BadUrl {
            url: url.to_string(),
            why,
        };
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else {
            return Err(bad("it must start with https:// or http://"));
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(bad("expected no path, query or user name"));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| {
            bad("expected HOST, HOST:PORT, or [IPv6]:PORT with a port from 1 to 65535")
        })?;
        let parsed = Self {
            scheme,
            host: host.to_string(),
            port,
        };
        if scheme == Scheme::Http && !parsed.is_loopback() {
            return Err(ClientError::PlainHttpBeyondLoopback {
                url: url.to_string(),
            });
        }
        Ok(parsed)
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host name or address, IPv6 without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `HOST:PORT`, as connected to and sent in `Host:` (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether the host is `localhost` or a loopback address.
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.to_canonical().is_loopback())
    }
}

fn split_host_port(authority: &str) -> Option<(&str, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() || (!authority.starts_with('[') && host.contains(':')) {
        return None;
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p.parse().ok().filter(|p| *p != 0)?,
    };
    Some((host, port))
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        write!(f, "{scheme}://{}", self.authority())
    }
}

/// A client of one broker. Cheap to clone; every request is its own connection (requests are
/// rare: CLI commands, and one long-poll at a time per proxy).
#[derive(Clone)]
pub struct Client {
    url: BrokerUrl,
    token: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Debug output ends up in logs; the token must not.
        f.debug_struct("Client")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Client {
    /// A client of `url`; an `https://` URL needs [`Client::with_tls`] too.
    pub fn new(url: BrokerUrl) -> Self {
        Self {
            url,
            token: None,
            tls: None,
        }
    }

    /// Sends `Authorization: Bearer TOKEN` with every request.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// How an `https://` broker is verified, and the client certificate offered to it.
    pub fn with_tls(
        mut self,
        trust: &BrokerTrust,
        identity: Option<&ClientIdentity>,
    ) -> Result<Self, ClientError> {
        self.tls = Some(crate::tls::client_config(trust, identity)?);
        Ok(self)
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

    /// Asks the broker to probe `name` now (it may answer with a probe from a moment ago); the
    /// host as that probe left it. A read credential is enough.
    pub async fn probe(&self, name: &str) -> Result<Host, ClientError> {
        let path = format!("/v1/hosts/{}/probe", encode(name));
        self.post(&path, &serde_json::json!({})).await
    }

    pub async fn forget(&self, name: &str) -> Result<ForgetResponse, ClientError> {
        let path = format!("/v1/hosts/{}/forget", encode(name));
        self.post(&path, &serde_json::json!({})).await
    }

    /// Creates an enrollment token for `request.host` (admin token).
    pub async fn enroll(
        &self,
        request: &crate::EnrollRequest,
    ) -> Result<crate::EnrollResponse, ClientError> {
        self.post("/v1/enrollments", request).await
    }

    /// Every enrollment token and where it stands (admin token).
    pub async fn enrollments(&self) -> Result<Vec<crate::Enrollment>, ClientError> {
        self.get("/v1/enrollments", REQUEST_TIMEOUT).await
    }

    pub async fn revoke_enrollment(&self, id: &str) -> Result<crate::Enrollment, ClientError> {
        let path = format!("/v1/enrollments/{}/revoke", encode(id));
        self.post(&path, &serde_json::json!({})).await
    }

    /// Replaces the per-host secret of a host enrolled through its agent (admin token).
    pub async fn rotate(&self, name: &str) -> Result<crate::RotateResponse, ClientError> {
        let path = format!("/v1/hosts/{}/rotate", encode(name));
        self.post(&path, &serde_json::json!({})).await
    }

    /// Long-poll: answers once the inventory's revision passes `since`, or after `timeout` —
    /// or at once when the broker's epoch is not `epoch` (it restarted since).
    pub async fn watch(
        &self,
        since: u64,
        epoch: Option<&str>,
        timeout: Duration,
    ) -> Result<WatchResponse, ClientError> {
        let mut path = format!("/v1/watch?since={since}&timeout={}s", timeout.as_secs());
        if let Some(epoch) = epoch {
            path.push_str(&format!("&epoch={}", encode(epoch)));
        }
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

    /// A request with a JSON body (none for GET and DELETE) and a JSON answer.
    pub(crate) async fn json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
        limit: Duration,
    ) -> Result<T, ClientError> {
        let body = if method == Method::GET || method == Method::DELETE {
            Bytes::new()
        } else {
            Bytes::from(serde_json::to_vec(body)?)
        };
        self.request(method, path, body, limit).await
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
        let timeout = || ClientError::Timeout {
            url: url.clone(),
            limit: CONNECT_TIMEOUT,
        };
        let connect = tokio::net::TcpStream::connect(self.url.authority());
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| timeout())?
            .map_err(|source| ClientError::Connect {
                url: url.clone(),
                source,
            })?;
        match self.url.scheme() {
            Scheme::Http => self.exchange_over(stream, method, path, body).await,
            Scheme::Https => {
                let config = self.tls.clone().ok_or(ClientError::NoTrust)?;
                let name = ServerName::try_from(self.url.host().to_string()).map_err(|_| {
                    ClientError::BadUrl {
                        url: url.clone(),
                        why: "the host is neither a DNS name nor an IP address",
                    }
                })?;
                let handshake = tokio_rustls::TlsConnector::from(config).connect(name, stream);
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
                    .await
                    .map_err(|_| timeout())?
                    .map_err(|source| ClientError::Tls {
                        url: url.clone(),
                        reason: crate::tls::describe(&source),
                    })?;
                self.exchange_over(stream, method, path, body).await
            }
        }
    }

    /// One request and its answer over `io` (TCP or TLS).
    async fn exchange_over<IO>(
        &self,
        io: IO,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ClientError>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let url = self.url.to_string();
        let http = |source| ClientError::Http {
            url: url.clone(),
            source,
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
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
    fn broker_urls_are_authorities_with_a_scheme_and_a_default_port() {
        let url = BrokerUrl::parse("http://127.0.0.1:16580/").unwrap();
        assert_eq!(url.authority(), "127.0.0.1:16580");
        assert_eq!(url.to_string(), "http://127.0.0.1:16580");
        let url = BrokerUrl::parse("https://[fd00::7]").unwrap();
        assert_eq!((url.host(), url.port()), ("fd00::7", DEFAULT_PORT));
        assert_eq!(url.to_string(), "https://[fd00::7]:16580");
        assert_eq!(
            BrokerUrl::parse("https://broker.example.org:443")
                .unwrap()
                .authority(),
            "broker.example.org:443"
        );
        for bad in [
            "127.0.0.1:16580",
            "ftp://h",
            "http://h/v1",
            "http://",
            "https://:16580",
            "https://h:0",
            "https://h:http",
            "https://fd00::7",
            "https://[nohost]:1",
            "https://user@h",
        ] {
            assert!(
                matches!(BrokerUrl::parse(bad), Err(ClientError::BadUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn plain_http_is_refused_for_a_broker_beyond_loopback_with_how_to_enable_tls() {
        for local in [
            "http://127.0.0.1:1",
            "http://127.8.9.1:1",
            "http://[::1]:1",
            "http://[::ffff:127.0.0.1]:1",
            "http://localhost:1",
            "http://LOCALHOST",
        ] {
            assert!(BrokerUrl::parse(local).is_ok(), "{local}");
        }
        for remote in [
            "http://10.0.0.5:16580",
            "http://0.0.0.0:16580",
            "http://[fd00::1]:16580",
            "http://broker.example.org",
        ] {
            let error = BrokerUrl::parse(remote).unwrap_err();
            assert!(
                matches!(error, ClientError::PlainHttpBeyondLoopback { .. }),
                "{remote}: {error}"
            );
            let text = error.to_string();
            assert!(
                text.contains("broker.tls_cert_file") && text.contains("--broker-ca"),
                "{text}"
            );
            assert!(BrokerUrl::parse(&remote.replace("http://", "https://")).is_ok());
        }
    }

    #[test]
    fn a_client_never_shows_its_token() {
        let client =
            Client::new(BrokerUrl::parse("http://127.0.0.1:1").unwrap()).with_token("s3cr3t-t0ken");
        assert!(!format!("{client:?}").contains("s3cr3t"), "{client:?}");
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode("h1.example-2"), "h1.example-2");
        assert_eq!(encode("a b/c?"), "a%20b%2Fc%3F");
    }
}
