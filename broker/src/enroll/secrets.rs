//! The per-host secrets of hosts enrolled through `virtgate agent`, as the broker keeps them:
//! `<broker.data_dir>/agent-secrets/<host>` (directory 0700, files 0600, replaced by rename),
//! one `v1 GENERATION HEX` line each. The gateway reads the same files (`proxy.agent_secret_dir`;
//! in Kubernetes a Secret made from this directory). Never served by the API, never logged.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use virtgate_pake::HostSecret;

/// The directory under `broker.data_dir`.
pub const SECRET_DIR: &str = "agent-secrets";

pub struct SecretStore {
    dir: PathBuf,
}

impl SecretStore {
    /// Opens (creating, 0700) `<data_dir>/agent-secrets`.
    pub fn open(data_dir: &Path) -> std::io::Result<SecretStore> {
        let dir = data_dir.join(SECRET_DIR);
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
        }
        Ok(SecretStore { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn read(&self, host: &str) -> Option<HostSecret> {
        if !HostSecret::is_file_name(host) {
            return None;
        }
        let text = std::fs::read_to_string(self.dir.join(host)).ok()?;
        HostSecret::parse(&text)
    }

    /// Writes `host`'s secret (0600) through a temporary file and a rename, so a gateway never
    /// reads half a file.
    pub fn write(&self, host: &str, secret: &HostSecret) -> std::io::Result<()> {
        if !HostSecret::is_file_name(host) {
            return Err(std::io::Error::other(format!(
                "{host:?} cannot name a secret file"
            )));
        }
        virtgate_pki::write_private_file(&self.dir.join(host), secret.to_file_text().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use virtgate_pake::Secret;

    #[test]
    fn secrets_are_written_0600_in_a_0700_directory_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = SecretStore::open(dir.path()).unwrap();
        let secret = HostSecret {
            generation: 1,
            secret: Secret::generate(),
        };
        store.write("h1", &secret).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(store.dir()), 0o700);
        assert_eq!(mode(&store.dir().join("h1")), 0o600);
        assert_eq!(
            store.read("h1").unwrap().secret.as_bytes(),
            secret.secret.as_bytes()
        );
        assert!(store.write("../evil", &secret).is_err());
        assert!(store.read("h2").is_none());
    }
}
