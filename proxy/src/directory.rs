//! Where host names resolve: the broker's inventory, in this process (`virtgate up`) or followed
//! over the broker's watch API (`virtgate proxy --broker URL`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tracing::{info, warn};
use virtgate_broker::inventory::Inventory;
use virtgate_broker::{Host, HostState, TrustState};

/// What the proxy needs to know about a host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTarget {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub port: u16,
    pub state: HostState,
    pub trust: TrustState,
    pub trust_detail: String,
    pub pin: Option<String>,
}

impl From<&Host> for HostTarget {
    fn from(h: &Host) -> Self {
        Self {
            name: h.name.clone(),
            addresses: h.addresses.clone(),
            port: h.port,
            state: h.state,
            trust: h.trust,
            trust_detail: h.trust_detail.clone(),
            pin: h.pin.clone(),
        }
    }
}

pub trait HostDirectory: Send + Sync + 'static {
    fn lookup(&self, name: &str) -> Option<HostTarget>;
}

/// The broker's inventory in this process.
pub struct InventoryDirectory(pub Arc<Inventory>);

impl HostDirectory for InventoryDirectory {
    fn lookup(&self, name: &str) -> Option<HostTarget> {
        self.0.host(name).as_ref().map(HostTarget::from)
    }
}

/// A copy of a remote broker's inventory, kept current by long-polling `GET /v1/watch`.
pub struct WatchedDirectory {
    hosts: RwLock<HashMap<String, HostTarget>>,
}

impl HostDirectory for WatchedDirectory {
    fn lookup(&self, name: &str) -> Option<HostTarget> {
        self.hosts
            .read()
            .expect("directory lock poisoned")
            .get(name)
            .cloned()
    }
}

impl WatchedDirectory {
    /// Starts following `base` (e.g. `http://127.0.0.1:16580`); the first copy is awaited up to
    /// `first_within` so the proxy does not start with an empty directory.
    pub async fn follow(base: &str, first_within: Duration) -> Arc<Self> {
        let dir = Arc::new(Self {
            hosts: RwLock::new(HashMap::new()),
        });
        let authority = base
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
        let follower = dir.clone();
        tokio::spawn(async move {
            let mut first = Some(first_tx);
            let mut since = 0u64;
            let mut backoff = Duration::from_millis(200);
            loop {
                match watch_once(&authority, since).await {
                    Ok((revision, hosts)) => {
                        backoff = Duration::from_millis(200);
                        let map = hosts
                            .iter()
                            .map(|h| (h.name.clone(), HostTarget::from(h)))
                            .collect();
                        *follower.hosts.write().expect("directory lock poisoned") = map;
                        if since == 0 {
                            info!(broker = %authority, hosts = hosts.len(), "following the broker's inventory");
                        }
                        since = revision;
                        if let Some(tx) = first.take() {
                            let _ = tx.send(());
                        }
                    }
                    Err(e) => {
                        warn!(broker = %authority, error = %e, "cannot follow the broker; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        });
        let _ = tokio::time::timeout(first_within, first_rx).await;
        dir
    }
}

async fn watch_once(authority: &str, since: u64) -> Result<(u64, Vec<Host>), String> {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("/v1/watch?since={since}&timeout=30s"))
        .header("host", authority)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(70), sender.send_request(req))
        .await
        .map_err(|_| "watch timed out".to_string())?
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("broker answered {}", response.status()));
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    #[derive(serde::Deserialize)]
    struct Watch {
        revision: u64,
        hosts: Vec<Host>,
    }
    let w: Watch = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    Ok((w.revision, w.hosts))
}
