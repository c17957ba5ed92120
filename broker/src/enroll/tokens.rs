//! Enrollment tokens as the broker keeps them: `<broker.data_dir>/enrollments.json` (0600,
//! replaced by rename). Not the secret: for each token the OPAQUE server keys and registration
//! record made from it when it was issued — enough to check an agent's proof, not to make one —
//! wiped once the token is spent or revoked.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use virtgate_api::{Enrollment, EnrollmentState};
use virtgate_pake::{Record, ServerKeys, Token};

pub const TOKENS_FILE: &str = "enrollments.json";
/// Failed proofs of one token before it is revoked.
pub const MAX_FAILURES: u32 = 5;
/// Tokens kept in the file; the oldest finished ones go first.
const MAX_TOKENS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Stored {
    Pending,
    Spent,
    Revoked,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct StoredToken {
    pub id: String,
    pub host: String,
    pub created_at: i64,
    pub expires_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    state: Stored,
    /// OPAQUE server keys of this token (hex); empty once finished.
    #[serde(default)]
    keys: String,
    /// OPAQUE registration record of this token's secret (hex); empty once finished.
    #[serde(default)]
    record: String,
    #[serde(default)]
    pub failures: u32,
    #[serde(default)]
    pub detail: String,
}

impl StoredToken {
    pub fn state(&self, now: i64) -> EnrollmentState {
        match self.state {
            Stored::Pending if now > self.expires_at => EnrollmentState::Expired,
            Stored::Pending => EnrollmentState::Pending,
            Stored::Spent => EnrollmentState::Spent,
            Stored::Revoked => EnrollmentState::Revoked,
        }
    }

    /// The keys and record to check an agent's proof with, while the token may be used.
    pub fn verifier(&self) -> Option<(ServerKeys, Record)> {
        let keys = ServerKeys::from_bytes(&hex::decode(&self.keys).ok()?).ok()?;
        let record = Record::from_bytes(&hex::decode(&self.record).ok()?).ok()?;
        Some((keys, record))
    }

    pub fn view(&self, now: i64) -> Enrollment {
        Enrollment {
            id: self.id.clone(),
            host: self.host.clone(),
            state: self.state(now),
            created_at: self.created_at,
            expires_at: self.expires_at,
            address: self.address.clone(),
            detail: self.detail.clone(),
        }
    }

    /// Why an agent presenting this token is refused, or `None` while it may be used.
    pub fn refusal(&self, now: i64) -> Option<String> {
        let id = &self.id;
        let host = &self.host;
        match self.state(now) {
            EnrollmentState::Pending => None,
            EnrollmentState::Expired => Some(format!("token {id} expired; create a new one with `virtgate enroll {host}` and run the command it prints")),
            EnrollmentState::Spent => Some(format!("token {id} was used already ({}); a token enrolls once — create a new one with `virtgate enroll {host}`", self.detail)),
            _ => Some(format!("token {id} was revoked ({}); create a new one with `virtgate enroll {host}`", self.detail)),
        }
    }

    fn finish(&mut self, state: Stored, detail: String) {
        self.state = state;
        self.detail = detail;
        self.keys.clear();
        self.record.clear();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("no enrollment token {0}; `virtgate enroll --list` lists them")]
    Unknown(String),
    #[error("token {id} is {state} already")]
    Finished { id: String, state: &'static str },
    #[error("enrollment tokens in {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} is unreadable; move it away to start with no tokens")]
    Corrupt(String),
}

pub struct TokenStore {
    path: PathBuf,
    tokens: Vec<StoredToken>,
}

impl TokenStore {
    pub fn open(data_dir: &Path) -> Result<TokenStore, TokenError> {
        let path = data_dir.join(TOKENS_FILE);
        let tokens = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|_| TokenError::Corrupt(path.display().to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(TokenError::File {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        Ok(TokenStore { path, tokens })
    }

    fn save(&self) -> Result<(), TokenError> {
        let err = |source| TokenError::File {
            path: self.path.display().to_string(),
            source,
        };
        let json = serde_json::to_vec_pretty(&self.tokens).expect("tokens serialise");
        virtgate_pki::write_private_file(&self.path, &json).map_err(err)
    }

    /// Issues a token for `host`, valid until `expires_at`; returns it (to be shown once).
    pub fn issue(
        &mut self,
        host: &str,
        address: Option<String>,
        now: i64,
        expires_at: i64,
    ) -> Result<Token, TokenError> {
        let token = loop {
            let t = Token::generate();
            if !self.tokens.iter().any(|s| s.id == t.id) {
                break t;
            }
        };
        let keys = ServerKeys::generate();
        let record = Record::register(&keys, token.secret_bytes(), token.id.as_bytes())
            .expect("registering a fresh token never fails");
        self.prune(now);
        self.tokens.push(StoredToken {
            id: token.id.clone(),
            host: host.to_string(),
            created_at: now,
            expires_at,
            address,
            state: Stored::Pending,
            keys: hex::encode(keys.to_bytes()),
            record: hex::encode(record.to_bytes()),
            failures: 0,
            detail: "waiting for the agent".into(),
        });
        self.save()?;
        Ok(token)
    }

    /// Keeps the file bounded: the oldest finished tokens go first.
    fn prune(&mut self, now: i64) {
        while self.tokens.len() >= MAX_TOKENS {
            let Some(i) = self
                .tokens
                .iter()
                .position(|t| t.state(now) != EnrollmentState::Pending)
            else {
                break;
            };
            self.tokens.remove(i);
        }
    }

    pub fn get(&self, id: &str) -> Option<&StoredToken> {
        self.tokens.iter().find(|t| t.id == id)
    }

    pub fn all(&self) -> &[StoredToken] {
        &self.tokens
    }

    fn get_mut(&mut self, id: &str) -> Result<&mut StoredToken, TokenError> {
        self.tokens
            .iter_mut()
            .find(|t| t.id == id)
            .ok_or_else(|| TokenError::Unknown(id.to_string()))
    }

    pub fn revoke(&mut self, id: &str, now: i64, why: &str) -> Result<Enrollment, TokenError> {
        let token = self.get_mut(id)?;
        match token.state(now) {
            EnrollmentState::Spent => {
                return Err(TokenError::Finished {
                    id: id.into(),
                    state: "spent",
                })
            }
            EnrollmentState::Revoked => {
                return Err(TokenError::Finished {
                    id: id.into(),
                    state: "revoked",
                })
            }
            _ => {}
        }
        token.finish(Stored::Revoked, why.to_string());
        let view = token.view(now);
        self.save()?;
        Ok(view)
    }

    /// The token was used: it enrolled its host.
    pub fn spend(&mut self, id: &str, detail: String) -> Result<(), TokenError> {
        self.get_mut(id)?.finish(Stored::Spent, detail);
        self.save()
    }

    /// An agent failed to prove the token; after [`MAX_FAILURES`] it is revoked.
    pub fn failed(&mut self, id: &str, detail: String) -> Result<(), TokenError> {
        let token = self.get_mut(id)?;
        token.failures += 1;
        if token.failures >= MAX_FAILURES {
            let why = format!("{MAX_FAILURES} failed attempts; last: {detail}");
            token.finish(Stored::Revoked, why);
        } else {
            token.detail = detail;
        }
        self.save()
    }

    /// Notes what happened on the last attempt.
    pub fn note(&mut self, id: &str, detail: String) {
        if let Ok(token) = self.get_mut(id) {
            if token.detail != detail {
                token.detail = detail;
                let _ = self.save();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn tokens_are_stored_without_their_secret_and_end_spent_revoked_or_expired() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = TokenStore::open(dir.path()).unwrap();
        let token = store.issue("h1", None, 100, 200).unwrap();
        let text = std::fs::read_to_string(dir.path().join(TOKENS_FILE)).unwrap();
        let shown = token.reveal();
        let secret = shown.split_once('.').unwrap().1.to_string();
        assert!(!text.contains(&secret), "the secret is never stored");
        let mode = std::fs::metadata(dir.path().join(TOKENS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let stored = store.get(&token.id).unwrap();
        assert_eq!(stored.state(150), EnrollmentState::Pending);
        assert!(stored.verifier().is_some());
        assert_eq!(stored.state(201), EnrollmentState::Expired);
        assert!(stored.refusal(201).unwrap().contains("expired"));

        store.spend(&token.id, "enrolled h1".into()).unwrap();
        let again = TokenStore::open(dir.path()).unwrap();
        let stored = again.get(&token.id).unwrap();
        assert_eq!(stored.state(150), EnrollmentState::Spent);
        assert!(stored.verifier().is_none(), "wiped once used");
        assert!(stored.refusal(150).unwrap().contains("used already"));
    }

    #[test]
    fn repeated_failed_proofs_revoke_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = TokenStore::open(dir.path()).unwrap();
        let id = store.issue("h1", None, 0, 1000).unwrap().id;
        for _ in 0..MAX_FAILURES {
            store.failed(&id, "wrong secret".into()).unwrap();
        }
        assert_eq!(store.get(&id).unwrap().state(1), EnrollmentState::Revoked);
        assert!(matches!(
            store.revoke(&id, 1, "x"),
            Err(TokenError::Finished { .. })
        ));
    }
}
