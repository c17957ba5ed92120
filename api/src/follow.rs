//! Following the broker: a copy of its inventory kept current by long-polling `GET /v1/watch`,
//! optionally kept in a cache file so that a restart while the broker is away does not start
//! empty, and a status (last answer, failures) for readiness and staleness metrics.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
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

/// The latest copy of the broker's inventory; `None` until the first answer (or a cached copy).
pub type Followed = watch::Receiver<Option<Arc<WatchResponse>>>;

/// How following goes, for readiness and the staleness metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FollowStatus {
    /// Unix seconds of the broker's last answer; while the copy in use came from the cache
    /// file, the time that copy was saved. 0: no copy yet.
    pub last_sync: i64,
    /// Polls that failed (broker unreachable, not verified, refusing) since start.
    pub errors: u64,
    /// The copy in use came from the cache file: the broker has not answered since start.
    pub from_cache: bool,
}

/// Why a cache file was not used or not written.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot read the inventory cache {path}: {source}; check the file's permissions, or delete it")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the inventory cache {path} is not a cache virtgate wrote ({source}); delete it")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the inventory cache {path} was written for broker {cached}, not {broker}; it is ignored and replaced by the next copy")]
    OtherBroker {
        path: PathBuf,
        cached: String,
        broker: String,
    },
    #[error("cannot write the inventory cache {path}: {source}; make its directory writable (an emptyDir on Kubernetes) or unset proxy.directory_cache_file")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the cache file holds: the last copy, which broker it came from, when it was saved.
#[derive(Debug, Serialize, Deserialize)]
struct CacheFile {
    broker: String,
    saved_at: i64,
    snapshot: WatchResponse,
}

/// Keeps a copy of a broker's inventory current. Run [`Follower::run`] in the owner's task set;
/// it ends when `shutdown` is cancelled.
pub struct Follower {
    client: Client,
    copy: watch::Sender<Option<Arc<WatchResponse>>>,
    status: watch::Sender<FollowStatus>,
    cache: Option<PathBuf>,
}

impl Follower {
    pub fn new(client: Client) -> (Self, Followed) {
        let (copy, followed) = watch::channel(None);
        let (status, _) = watch::channel(FollowStatus::default());
        let follower = Self {
            client,
            copy,
            status,
            cache: None,
        };
        (follower, followed)
    }

    /// Keeps every copy in `file` (written whole, then renamed into place, mode 0600) and starts
    /// from the copy found there when it was written for the same broker. A missing file is
    /// not an error; any other problem is returned (and the follower starts empty).
    pub fn with_cache(&mut self, file: PathBuf) -> Result<(), CacheError> {
        self.cache = Some(file.clone());
        let Some(cached) = read_cache(&file, &self.client.url().to_string())? else {
            return Ok(());
        };
        info!(
            file = %file.display(),
            hosts = cached.snapshot.hosts.len(),
            saved_at = cached.saved_at,
            "starting from the cached copy of the broker's inventory until the broker answers"
        );
        self.status.send_replace(FollowStatus {
            last_sync: cached.saved_at,
            errors: 0,
            from_cache: true,
        });
        self.copy.send_replace(Some(Arc::new(cached.snapshot)));
        Ok(())
    }

    /// How following goes; changes with every answer and every failure.
    pub fn status(&self) -> watch::Receiver<FollowStatus> {
        self.status.subscribe()
    }

    /// Long-polls the watch until `shutdown`. Each answer carries the whole inventory and
    /// replaces the copy. The broker's epoch goes with every poll: after a broker restart its
    /// revisions start again, so the broker answers at once, and the follower starts over from
    /// that answer instead of waiting for the new revisions to pass the old ones. A failure
    /// keeps the copy: every connection still checks the host's key against its pin.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut since = 0u64;
        let mut epoch: Option<String> = None;
        let mut following = false;
        let mut cache_ok = true;
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
                    let snapshot = Arc::new(snapshot);
                    let now = now_unix();
                    if let Some(file) = &self.cache {
                        cache_ok = self.save(file, &broker, &snapshot, now, cache_ok).await;
                    }
                    self.copy.send_replace(Some(snapshot));
                    self.status.send_modify(|s| {
                        s.last_sync = now;
                        s.from_cache = false;
                    });
                }
                Err(e) => {
                    self.status.send_modify(|s| s.errors += 1);
                    warn!(%broker, error = %e, retry_in = ?backoff, "cannot follow the broker; retrying with the last copy of its inventory");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Writes the cache off the async threads; warns once per run of failures. Returns whether
    /// this write worked.
    async fn save(
        &self,
        file: &Path,
        broker: &str,
        snapshot: &Arc<WatchResponse>,
        now: i64,
        was_ok: bool,
    ) -> bool {
        let (file, broker, snapshot) = (file.to_path_buf(), broker.to_string(), snapshot.clone());
        let written =
            tokio::task::spawn_blocking(move || write_cache(&file, &broker, &snapshot, now)).await;
        match written {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                if was_ok {
                    warn!(error = %e, "the inventory cache is not kept up to date");
                }
                false
            }
            Err(e) => {
                warn!(error = %e, "writing the inventory cache failed");
                false
            }
        }
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The cached copy in `file` if there is one for `broker`.
fn read_cache(file: &Path, broker: &str) -> Result<Option<CacheFile>, CacheError> {
    let text = match std::fs::read(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CacheError::Read {
                path: file.to_path_buf(),
                source,
            })
        }
    };
    let cached: CacheFile = serde_json::from_slice(&text).map_err(|source| CacheError::Parse {
        path: file.to_path_buf(),
        source,
    })?;
    if cached.broker != broker {
        return Err(CacheError::OtherBroker {
            path: file.to_path_buf(),
            cached: cached.broker,
            broker: broker.to_string(),
        });
    }
    Ok(Some(cached))
}

/// Writes `FILE.tmp` (0600), then renames it over `file`: a reader never sees half a copy.
fn write_cache(
    file: &Path,
    broker: &str,
    snapshot: &WatchResponse,
    saved_at: i64,
) -> Result<(), CacheError> {
    let error = |source| CacheError::Write {
        path: file.to_path_buf(),
        source,
    };
    let body = serde_json::to_vec(&CacheFile {
        broker: broker.to_string(),
        saved_at,
        snapshot: snapshot.clone(),
    })
    .map_err(|e| error(std::io::Error::other(e)))?;
    virtgate_pki::write_private_file(file, &body).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Host, HostSource};

    fn snapshot(hosts: &[&str]) -> WatchResponse {
        WatchResponse {
            revision: 7,
            hosts: hosts
                .iter()
                .map(|n| Host::new(n, HostSource::Static, 16514, vec![], 0))
                .collect(),
            epoch: "e1".into(),
        }
    }

    #[test]
    fn a_cached_copy_reads_back_for_the_broker_that_wrote_it_and_only_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("inventory.json");
        assert!(read_cache(&file, "https://b:16580/").unwrap().is_none());
        write_cache(&file, "https://b:16580/", &snapshot(&["h1", "h2"]), 1234).unwrap();
        let cached = read_cache(&file, "https://b:16580/").unwrap().unwrap();
        assert_eq!(
            (cached.saved_at, cached.snapshot),
            (1234, snapshot(&["h1", "h2"]))
        );
        let other = read_cache(&file, "https://other:16580/").unwrap_err();
        assert!(
            other.to_string().contains("not https://other:16580/"),
            "{other}"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the copy holds pins: owner only");
    }

    #[test]
    fn a_file_that_is_not_a_cache_is_reported_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("inventory.json");
        std::fs::write(&file, "{not json").unwrap();
        let e = read_cache(&file, "https://b:16580/").unwrap_err();
        assert!(e.to_string().ends_with("delete it"), "{e}");
    }
}
