//! Following the broker: a copy of its inventory kept current by long-polling `GET /v1/watch`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::client::Client;
use crate::model::WatchResponse;

/// How long one long-poll waits for a change before the broker answers anyway.
const POLL: Duration = Duration::from_secs(30);
/// Retry pacing after a failure: first wait, then doubling up to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The latest copy of the broker's inventory; `None` until the first answer.
pub type Followed = watch::Receiver<Option<Arc<WatchResponse>>>;

/// Keeps a copy of a broker's inventory current. Run [`Follower::run`] in the owner's task set;
/// it ends when `shutdown` is cancelled.
pub struct Follower {
    client: Client,
    copy: watch::Sender<Option<Arc<WatchResponse>>>,
}

impl Follower {
    pub fn new(client: Client) -> (Self, Followed) {
        let (copy, followed) = watch::channel(None);
        (Self { client, copy }, followed)
    }

    /// Long-polls the watch until `shutdown`. Each answer carries the whole inventory and
    /// replaces the copy. The broker's epoch goes with every poll: after a broker restart its
    /// revisions start again, so the broker answers at once, and the follower starts over from
    /// that answer instead of waiting for the new revisions to pass the old ones.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut since = 0u64;
        let mut epoch: Option<String> = None;
        let mut following = false;
        let mut backoff = BACKOFF_FIRST;
        let broker = self.client.url().to_string();
        loop {
            let answer = tokio::select! {
                answer = self.client.watch(since, epoch.as_deref(), POLL) => answer,
                () = shutdown.cancelled() => return,
            };
            match answer {
                Ok(snapshot) => {
                    backoff = BACKOFF_FIRST;
                    let hosts = snapshot.hosts.len();
                    if !following {
                        following = true;
                        info!(%broker, hosts, "following the broker's inventory");
                    } else if epoch.as_ref().is_some_and(|known| *known != snapshot.epoch) {
                        info!(%broker, hosts, "the broker restarted; following its inventory from the start");
                    }
                    since = snapshot.revision;
                    epoch = Some(snapshot.epoch.clone()).filter(|e| !e.is_empty());
                    self.copy.send_replace(Some(Arc::new(snapshot)));
                }
                Err(e) => {
                    warn!(%broker, error = %e, retry_in = ?backoff, "cannot follow the broker; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}
