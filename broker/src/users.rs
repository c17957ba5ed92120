//! The users who may log in at the gateway with a password, as the broker keeps them:
//! `<broker.data_dir>/users.json` (mode 0600, replaced whole through a rename) holding each
//! user's RFC 5802 verifiers — salt, iterations, StoredKey, ServerKey — and never a password
//! (`virtgate users add` derives them at the operator's terminal). Also the key of the fake
//! verifiers every gateway answers unknown names with, made once. Gateways get them through
//! `GET /v1/gateway/users`, or in process in `virtgate up`; a revision counter tells followers
//! what changed.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use virtgate_api::users::{NewUser, User, UserSummary, UsersSnapshot};

/// The file under `broker.data_dir`.
pub const USERS_FILE: &str = "users.json";
/// Most verifiers per user (one per mechanism).
const MAX_VERIFIERS: usize = 4;
/// Longest verifier text.
const MAX_VERIFIER: usize = 512;
/// Mechanisms a verifier may be for.
const MECHANISMS: [&str; 2] = ["SCRAM-SHA-256", "SCRAM-SHA-512"];

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("user {0:?} exists already; `virtgate users passwd {0}` sets a new password")]
    Exists(String),
    #[error("no user {0:?}; `virtgate users list` lists them, `virtgate users add {0}` adds one")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("users file {path}: {source}; check the data directory's permissions and free space")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("users file {path} cannot be read ({why}); restore it from a backup or move it away to start with no users")]
    Corrupt { path: String, why: String },
}

#[derive(Clone, Serialize, Deserialize)]
struct UsersFile {
    version: u32,
    /// Hex, 32 bytes.
    fake_key: String,
    users: Vec<User>,
}

/// The users, on disk and in memory.
pub struct UsersStore {
    path: PathBuf,
    state: Mutex<UsersFile>,
    revision: watch::Sender<u64>,
}

/// Whether `name` can name a user: 1 to 64 of `A-Z a-z 0-9 . _ - @`, not starting with `-`
/// (the gateway's rule, `virtgate_proxy::auth::is_valid_name`).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

/// The shape of verifiers (the gateway reads them fully): one per mechanism, each
/// `SCRAM-SHA-…$…`, bounded.
fn check_verifiers(verifiers: &[String]) -> Result<Vec<String>, UsersError> {
    let invalid = |why: &str| {
        UsersError::Invalid(format!(
            "verifiers: {why}; `virtgate users` makes them from a password"
        ))
    };
    if verifiers.is_empty() || verifiers.len() > MAX_VERIFIERS {
        return Err(invalid(
            "give one per mechanism (SCRAM-SHA-256, SCRAM-SHA-512)",
        ));
    }
    let mut seen = Vec::new();
    for v in verifiers {
        let mechanism = v.split('$').next().unwrap_or_default();
        if v.len() > MAX_VERIFIER || !MECHANISMS.contains(&mechanism) || v.split('$').count() != 3 {
            return Err(invalid(
                "each must read SCRAM-SHA-256$ITERATIONS:SALT$STOREDKEY:SERVERKEY",
            ));
        }
        if seen.contains(&mechanism) {
            return Err(invalid("one per mechanism"));
        }
        seen.push(mechanism);
    }
    Ok(verifiers.to_vec())
}

fn summary(user: &User) -> UserSummary {
    UserSummary {
        name: user.name.clone(),
        mechanisms: user
            .verifiers
            .iter()
            .map(|v| v.split('$').next().unwrap_or_default().to_string())
            .collect(),
        updated: user.updated,
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl UsersStore {
    /// Opens `<data_dir>/users.json`, creating it (with a new fake-verifier key) if missing.
    pub fn open(data_dir: &Path) -> Result<Self, UsersError> {
        let path = data_dir.join(USERS_FILE);
        let io = |source| UsersError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| UsersError::Corrupt {
                path: path.display().to_string(),
                why: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = crate::token::random_hex(32).map_err(io)?;
                let file = UsersFile {
                    version: 1,
                    fake_key: key,
                    users: Vec::new(),
                };
                write(&path, &file).map_err(io)?;
                file
            }
            Err(e) => return Err(io(e)),
        };
        Ok(Self {
            path,
            state: Mutex::new(file),
            revision: watch::channel(1).0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every user, without verifiers, by name.
    pub fn list(&self) -> Vec<UserSummary> {
        let state = self.state.lock().expect("users poisoned");
        let mut users: Vec<UserSummary> = state.users.iter().map(summary).collect();
        users.sort_by(|a, b| a.name.cmp(&b.name));
        users
    }

    /// Every user with verifiers, the fake-verifier key, and the revision.
    pub fn snapshot(&self, epoch: &str) -> UsersSnapshot {
        let state = self.state.lock().expect("users poisoned");
        UsersSnapshot {
            revision: *self.revision.borrow(),
            epoch: epoch.to_string(),
            fake_key: state.fake_key.clone(),
            users: state.users.clone(),
        }
    }

    /// The revision, bumped by every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    pub fn add(&self, new: &NewUser) -> Result<UserSummary, UsersError> {
        if !is_valid_name(&new.name) {
            return Err(UsersError::Invalid(format!(
                "{:?} cannot name a user: use 1 to 64 letters, digits, '.', '_', '-' or '@', not starting with '-'",
                new.name
            )));
        }
        let verifiers = check_verifiers(&new.verifiers)?;
        self.change(|users| {
            if users.iter().any(|u| u.name == new.name) {
                return Err(UsersError::Exists(new.name.clone()));
            }
            let user = User {
                name: new.name.clone(),
                verifiers,
                updated: now(),
            };
            let answer = summary(&user);
            users.push(user);
            Ok(answer)
        })
    }

    pub fn set(&self, name: &str, verifiers: &[String]) -> Result<UserSummary, UsersError> {
        let verifiers = check_verifiers(verifiers)?;
        self.change(|users| {
            let user = users
                .iter_mut()
                .find(|u| u.name == name)
                .ok_or_else(|| UsersError::NotFound(name.to_string()))?;
            user.verifiers = verifiers;
            user.updated = now();
            Ok(summary(user))
        })
    }

    pub fn remove(&self, name: &str) -> Result<UserSummary, UsersError> {
        self.change(|users| {
            let at = users
                .iter()
                .position(|u| u.name == name)
                .ok_or_else(|| UsersError::NotFound(name.to_string()))?;
            Ok(summary(&users.remove(at)))
        })
    }

    /// Applies `f` to a copy, writes it, then publishes it.
    fn change<T>(
        &self,
        f: impl FnOnce(&mut Vec<User>) -> Result<T, UsersError>,
    ) -> Result<T, UsersError> {
        let mut state = self.state.lock().expect("users poisoned");
        let mut next = state.clone();
        let answer = f(&mut next.users)?;
        write(&self.path, &next).map_err(|source| UsersError::Io {
            path: self.path.display().to_string(),
            source,
        })?;
        *state = next;
        self.revision.send_modify(|r| *r += 1);
        Ok(answer)
    }
}

/// Writes `file` (0600) through a temporary file and a rename.
fn write(path: &Path, file: &UsersFile) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(file).map_err(std::io::Error::other)?;
    virtgate_pki::write_private_file(path, &json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const V256: &str = "SCRAM-SHA-256$4096:c2FsdA==$AAAA:BBBB";
    const V512: &str = "SCRAM-SHA-512$4096:c2FsdA==$AAAA:BBBB";

    fn new(name: &str) -> NewUser {
        NewUser {
            name: name.into(),
            verifiers: vec![V256.into(), V512.into()],
        }
    }

    #[test]
    fn users_are_kept_0600_survive_a_restart_and_each_change_bumps_the_revision() {
        let dir = tempfile::tempdir().unwrap();
        let store = UsersStore::open(dir.path()).unwrap();
        let revision = store.subscribe();
        let key = store.snapshot("e").fake_key;
        assert_eq!(key.len(), 64);
        store.add(&new("alice")).unwrap();
        assert!(matches!(
            store.add(&new("alice")),
            Err(UsersError::Exists(_))
        ));
        store.set("alice", &[V256.into()]).unwrap();
        assert!(matches!(
            store.set("bob", &[V256.into()]),
            Err(UsersError::NotFound(_))
        ));
        assert_eq!(*revision.borrow(), 3);
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);

        let again = UsersStore::open(dir.path()).unwrap();
        let snapshot = again.snapshot("e");
        assert_eq!(
            snapshot.fake_key, key,
            "the same fake verifiers after a restart"
        );
        assert_eq!(snapshot.users[0].verifiers, vec![V256.to_string()]);
        assert_eq!(again.list()[0].mechanisms, vec!["SCRAM-SHA-256"]);
        again.remove("alice").unwrap();
        assert!(again.list().is_empty());
    }

    #[test]
    fn names_and_verifiers_of_the_wrong_shape_are_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let store = UsersStore::open(dir.path()).unwrap();
        for name in ["", "-x", "a b", "a,b", "user:x"] {
            assert!(
                matches!(store.add(&new(name)), Err(UsersError::Invalid(_))),
                "{name:?}"
            );
        }
        for verifiers in [
            vec![],
            vec!["hunter2".to_string()],
            vec![V256.into(), V256.into()],
            vec!["PLAIN$a$b".into()],
        ] {
            let user = NewUser {
                name: "bob".into(),
                verifiers,
            };
            assert!(matches!(store.add(&user), Err(UsersError::Invalid(_))));
        }
    }
}
