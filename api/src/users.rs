//! Passwords in the `/v1` contract: the users who may log in at the gateway (their RFC 5802
//! verifiers, never a password), how gateways following a broker get them, and the gateway's
//! credentials for hosts whose libvirtd demands SASL — set through the API, kept in a 0600 file
//! per host that the gateway reads and never served back.
//!
//! Endpoints (all but the gateways' one need the admin token):
//! - `GET /v1/users` → [`UserSummary`]s; `POST /v1/users` [`NewUser`] (409 if the name exists);
//!   `PUT /v1/users/{name}` [`UserVerifiers`] (404 if it does not); `DELETE /v1/users/{name}`.
//! - `GET /v1/gateway/users?since=&timeout=&epoch=` → [`UsersSnapshot`], a long-poll like the
//!   watch, for gateways (a proxy certificate, the read token or the admin token; also on
//!   loopback).
//! - `PUT /v1/hosts/{name}/credentials` [`HostCredentialsRequest`] → [`HostCredentialsSet`];
//!   `DELETE /v1/hosts/{name}/credentials`.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::Method;
use serde::{Deserialize, Serialize};

use crate::client::{encode, Client, ClientError, REQUEST_TIMEOUT};

/// A user as gateways get it: the name and one verifier per mechanism, each written
/// `SCRAM-SHA-256$ITERATIONS:SALT$STOREDKEY:SERVERKEY` (base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub verifiers: Vec<String>,
    /// Unix seconds of the last change.
    pub updated: i64,
}

/// A user as `virtgate users list` shows it: no verifier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSummary {
    pub name: String,
    pub mechanisms: Vec<String>,
    pub updated: i64,
}

/// `POST /v1/users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewUser {
    pub name: String,
    pub verifiers: Vec<String>,
}

/// `PUT /v1/users/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserVerifiers {
    pub verifiers: Vec<String>,
}

/// `GET /v1/gateway/users`: every user, and the key every gateway makes its fake verifiers for
/// unknown names with (so all of them answer an unknown name alike, across restarts).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsersSnapshot {
    pub revision: u64,
    pub epoch: String,
    /// Hex.
    pub fake_key: String,
    pub users: Vec<User>,
}

impl std::fmt::Debug for UsersSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsersSnapshot")
            .field("revision", &self.revision)
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

/// `PUT /v1/hosts/{name}/credentials`: the user name and password in the host's SASL database.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCredentialsRequest {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for HostCredentialsRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCredentialsRequest")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The answer: which host and user; never the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCredentialsSet {
    pub host: String,
    pub user: String,
}

/// A SaltedPassword the gateway keeps in place of a host's password (RFC 5802 §5.1), base64.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaltedEntry {
    pub mechanism: String,
    pub iterations: u32,
    pub salt: String,
    pub salted_password: String,
}

/// One host's credentials file, `<dir>/<host>` (JSON, mode 0600): the user, and the password
/// until the gateway has logged in once and keeps the SaltedPassword for the host's salt instead.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCredentialsFile {
    pub version: u32,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub salted: Vec<SaltedEntry>,
}

impl std::fmt::Debug for HostCredentialsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCredentialsFile")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("salted", &self.salted.len())
            .finish()
    }
}

/// The host-credentials directory: one file per host, named after it (lower case), 0600 in a
/// 0700 directory, each replaced whole through a rename.
#[derive(Debug, Clone)]
pub struct CredentialsDir {
    dir: PathBuf,
}

/// The directory under `broker.data_dir`.
pub const CREDENTIALS_DIR: &str = "host-credentials";

impl CredentialsDir {
    /// `dir`, created (0700) if missing.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// `dir` as it is, for reading (a read-only mount, say).
    pub fn at(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Whether `host` can name a file here: a host name in lower case, nothing else.
    pub fn is_file_name(host: &str) -> bool {
        !host.is_empty()
            && host.len() <= 253
            && !host.starts_with('.')
            && host
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._:".contains(&b))
    }

    fn file(&self, host: &str) -> Option<PathBuf> {
        let host = host.to_ascii_lowercase();
        Self::is_file_name(&host).then(|| self.dir.join(host))
    }

    /// The credentials of `host`, if set and readable.
    pub fn read(&self, host: &str) -> Option<HostCredentialsFile> {
        let text = std::fs::read_to_string(self.file(host)?).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes `host`'s credentials (0600) through a temporary file and a rename, so a gateway
    /// never reads half a file.
    pub fn write(&self, host: &str, credentials: &HostCredentialsFile) -> std::io::Result<()> {
        let path = self
            .file(host)
            .ok_or_else(|| std::io::Error::other(format!("{host:?} cannot name a file")))?;
        let json = serde_json::to_vec_pretty(credentials).map_err(std::io::Error::other)?;
        virtgate_pki::write_private_file(&path, &json)
    }

    /// Removes `host`'s credentials; whether there were any.
    pub fn remove(&self, host: &str) -> std::io::Result<bool> {
        let Some(path) = self.file(host) else {
            return Ok(false);
        };
        match std::fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The user name of `host`'s credentials, if set (for listings; no secret).
    pub fn user(&self, host: &str) -> Option<String> {
        self.read(host).map(|c| c.user)
    }
}

impl Client {
    /// Every user, without verifiers (admin token).
    pub async fn users(&self) -> Result<Vec<UserSummary>, ClientError> {
        self.json(Method::GET, "/v1/users", &(), REQUEST_TIMEOUT)
            .await
    }

    /// Adds a user; the broker refuses a name that exists (409).
    pub async fn add_user(&self, user: &NewUser) -> Result<UserSummary, ClientError> {
        self.json(Method::POST, "/v1/users", user, REQUEST_TIMEOUT)
            .await
    }

    /// Replaces a user's verifiers (a new password); 404 for an unknown name.
    pub async fn set_user(
        &self,
        name: &str,
        verifiers: &UserVerifiers,
    ) -> Result<UserSummary, ClientError> {
        let path = format!("/v1/users/{}", encode(name));
        self.json(Method::PUT, &path, verifiers, REQUEST_TIMEOUT)
            .await
    }

    pub async fn remove_user(&self, name: &str) -> Result<UserSummary, ClientError> {
        let path = format!("/v1/users/{}", encode(name));
        self.json(Method::DELETE, &path, &(), REQUEST_TIMEOUT).await
    }

    /// Long-poll for gateways: answers once the users' revision passes `since`, after
    /// `timeout`, or at once when the broker's epoch is not `epoch`.
    pub async fn users_snapshot(
        &self,
        since: u64,
        epoch: Option<&str>,
        timeout: Duration,
    ) -> Result<UsersSnapshot, ClientError> {
        let mut path = format!(
            "/v1/gateway/users?since={since}&timeout={}s",
            timeout.as_secs()
        );
        if let Some(epoch) = epoch {
            path.push_str(&format!("&epoch={}", encode(epoch)));
        }
        self.json(Method::GET, &path, &(), timeout + REQUEST_TIMEOUT)
            .await
    }

    /// Sets the gateway's credentials for `host` (admin token).
    pub async fn set_host_credentials(
        &self,
        host: &str,
        request: &HostCredentialsRequest,
    ) -> Result<HostCredentialsSet, ClientError> {
        let path = format!("/v1/hosts/{}/credentials", encode(host));
        self.json(Method::PUT, &path, request, REQUEST_TIMEOUT)
            .await
    }

    pub async fn remove_host_credentials(
        &self,
        host: &str,
    ) -> Result<HostCredentialsSet, ClientError> {
        let path = format!("/v1/hosts/{}/credentials", encode(host));
        self.json(Method::DELETE, &path, &(), REQUEST_TIMEOUT).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn host_credentials_are_written_0600_in_a_0700_directory_read_back_and_never_debug_printed() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialsDir::open(&dir.path().join(CREDENTIALS_DIR)).unwrap();
        let credentials = HostCredentialsFile {
            version: 1,
            user: "nova".into(),
            password: Some("s3cret".into()),
            salted: vec![],
        };
        store.write("H1", &credentials).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(store.path()), 0o700);
        assert_eq!(mode(&store.path().join("h1")), 0o600);
        assert_eq!(store.read("h1").unwrap(), credentials);
        assert_eq!(store.user("h1").as_deref(), Some("nova"));
        assert!(!format!("{credentials:?}").contains("s3cret"));
        assert!(store.write("../evil", &credentials).is_err());
        assert!(store.read("h2").is_none());
        assert!(store.remove("h1").unwrap());
        assert!(!store.remove("h1").unwrap());
    }
}
