//! The composition root's adapters for passwords: the broker's users (in this process, or
//! followed over its API) become the proxy's table of users, and the host-credentials directory
//! (one 0600 file per host, written by the broker for `virtgate hosts credentials`) becomes the
//! proxy's source of logins for hosts that demand SASL.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use virtgate_api::users::{CredentialsDir, HostCredentialsFile, SaltedEntry, UsersSnapshot};
use virtgate_broker::users::UsersStore;
use virtgate_proxy::auth::{
    ClientSecret, HostCredentials, HostLogin, Mechanism, Salted, Users, UsersWatch, Verifier,
};

/// The proxy's table for a snapshot of the broker's users. A verifier the gateway cannot read
/// is left out (logged by user name only): that user cannot log in until `users passwd`.
pub fn users_table(snapshot: &UsersSnapshot) -> Users {
    let key = hex::decode(&snapshot.fake_key).unwrap_or_default();
    let users = snapshot.users.iter().map(|u| {
        let verifiers = u
            .verifiers
            .iter()
            .filter_map(|text| match Verifier::parse(text) {
                Ok(v) => Some(v),
                Err(e) => {
                    warn!(user = %u.name, error = %e, "a verifier of this user cannot be read; `virtgate users passwd` replaces it");
                    None
                }
            })
            .collect();
        (u.name.clone(), verifiers)
    });
    Users::new(users, &key)
}

/// Publishes the in-process users as the proxy's table, again after every change, until
/// `shutdown`.
pub fn from_store(
    store: Arc<UsersStore>,
    epoch: String,
    shutdown: CancellationToken,
) -> (UsersWatch, impl Future<Output = ()>) {
    let mut revisions = store.subscribe();
    let (tx, rx) = watch::channel(Arc::new(users_table(&store.snapshot(&epoch))));
    let publish = async move {
        loop {
            tokio::select! {
                changed = revisions.changed() => if changed.is_err() { return },
                () = shutdown.cancelled() => return,
            }
            tx.send_replace(Arc::new(users_table(&store.snapshot(&epoch))));
        }
    };
    (rx, publish)
}

/// How long one users long-poll waits at the broker.
const POLL: Duration = Duration::from_secs(60);
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Follows the broker's users over its API (`GET /v1/gateway/users`) and publishes them, until
/// `shutdown`. Until the first answer nobody can log in with a password.
pub fn from_broker(
    client: virtgate_api::Client,
    shutdown: CancellationToken,
) -> (UsersWatch, impl Future<Output = ()>) {
    let (tx, rx) = watch::channel(Arc::new(Users::new([], &[])));
    let publish = async move {
        let (mut since, mut epoch) = (0u64, None::<String>);
        let mut backoff = BACKOFF_FIRST;
        let broker = client.url().to_string();
        loop {
            let answer = tokio::select! {
                answer = client.users_snapshot(since, epoch.as_deref(), POLL) => answer,
                () = shutdown.cancelled() => return,
            };
            match answer {
                Ok(snapshot) => {
                    backoff = BACKOFF_FIRST;
                    if since == 0 {
                        info!(%broker, users = snapshot.users.len(), "following the broker's users");
                    }
                    since = snapshot.revision;
                    epoch = Some(snapshot.epoch.clone()).filter(|e| !e.is_empty());
                    tx.send_replace(Arc::new(users_table(&snapshot)));
                }
                Err(e) => {
                    warn!(%broker, error = %e, retry_in = ?backoff, "cannot follow the broker's users; retrying (password logins use the last copy)");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    };
    (rx, publish)
}

/// Host logins read from the host-credentials directory at each connection to a host that
/// demands SASL. After a login the host proved, the password is replaced in the file by the
/// SaltedPassword for the host's salt (when the directory is writable; a read-only copy keeps
/// the password).
pub struct DirCredentials {
    dir: CredentialsDir,
}

impl DirCredentials {
    pub fn new(dir: CredentialsDir) -> Self {
        Self { dir }
    }
}

fn salted_from(entry: &SaltedEntry) -> Option<Salted> {
    Some(Salted {
        mechanism: Mechanism::from_name(&entry.mechanism)?,
        iterations: entry.iterations,
        salt: B64.decode(&entry.salt).ok()?,
        salted_password: B64.decode(&entry.salted_password).ok()?,
    })
}

fn entry_from(salted: &Salted) -> SaltedEntry {
    SaltedEntry {
        mechanism: salted.mechanism.name().to_string(),
        iterations: salted.iterations,
        salt: B64.encode(&salted.salt),
        salted_password: B64.encode(&salted.salted_password),
    }
}

impl HostCredentials for DirCredentials {
    fn login(&self, host: &str) -> Option<HostLogin> {
        let file = self.dir.read(host)?;
        Some(HostLogin {
            user: file.user.clone(),
            secret: ClientSecret {
                password: file.password.clone(),
                salted: file.salted.iter().filter_map(salted_from).collect(),
            },
        })
    }

    fn learned(&self, host: &str, user: &str, salted: &Salted) {
        let Some(file) = self.dir.read(host) else {
            return;
        };
        if file.user != user {
            return; // changed meanwhile; the next login learns again
        }
        let mut kept: Vec<SaltedEntry> = file
            .salted
            .into_iter()
            .filter(|e| e.mechanism != salted.mechanism.name())
            .collect();
        kept.push(entry_from(salted));
        let next = HostCredentialsFile {
            version: file.version,
            user: file.user,
            password: None,
            salted: kept,
        };
        match self.dir.write(host, &next) {
            Ok(()) => {
                info!(host, "host credentials: the password is replaced by the SaltedPassword for the host's salt")
            }
            Err(e) => {
                warn!(host, error = %e, "host credentials: cannot replace the password by the SaltedPassword (read-only directory?); the password stays")
            }
        }
    }
}
