//! Bearer tokens kept in files (the admin token, the optional read token): 256 random bits,
//! written once through a new 0600 file renamed into place, and refused when the file lets
//! group or others read it. Tokens are never logged; only their paths are.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tracing::info;

use crate::BrokerError;

/// Mode of every token file.
pub const TOKEN_MODE: u32 = 0o600;

/// Reads the token in `path`, generating it (0600) when the file is missing or empty. `role`
/// names the token in the log (`admin`, `read`).
///
/// A non-empty token file that group or others may read is refused, not rewritten: whoever
/// could read it may hold the token, so the operator decides whether to replace it (delete the
/// file) or keep it (`chmod 600`).
pub fn load_or_create_token(path: &Path, role: &str) -> Result<String, BrokerError> {
    if let Some(token) = read_token(path)? {
        return Ok(token);
    }
    let token = create_token(path)?;
    info!(path = %path.display(), role, "generated a token (mode 0600)");
    Ok(token)
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> BrokerError + '_ {
    move |source| BrokerError::Token {
        path: path.display().to_string(),
        source,
    }
}

/// The token in `path`; `None` when there is no file or it holds nothing (a crash during the
/// first start, or a `touch`): nothing secret is lost by replacing it.
fn read_token(path: &Path) -> Result<Option<String>, BrokerError> {
    let io = io_error(path);
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let meta = file.metadata().map_err(&io)?;
    if !meta.is_file() {
        return Err(io(std::io::Error::other(
            "not a regular file; point the setting at a file",
        )));
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(&io)?;
    let token = text.trim();
    if token.is_empty() {
        return Ok(None);
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(BrokerError::TokenExposed {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(Some(token.to_string()))
}

/// Writes a fresh token into a new file beside `path` (created 0600, never an existing one)
/// and renames it over `path`, so the token never lives in a file with another mode.
fn create_token(path: &Path) -> Result<String, BrokerError> {
    let io = io_error(path);
    let token = random_hex(32).map_err(&io)?;
    virtgate_pki::write_private_file(path, format!("{token}\n").as_bytes()).map_err(io)?;
    Ok(token)
}

/// `bytes` random bytes from the operating system, as hex.
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut raw = vec![0u8; bytes];
    getrandom::fill(&mut raw).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(hex::encode(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_missing_token_is_generated_with_mode_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        let token = load_or_create_token(&path, "admin").unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(load_or_create_token(&path, "admin").unwrap(), token);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["admin.token"], "no temporary file is left");
    }

    #[test]
    fn a_token_file_readable_by_group_or_others_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        for exposed in [0o644, 0o640, 0o604] {
            std::fs::write(&path, "0123456789abcdef\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(exposed)).unwrap();
            let error = load_or_create_token(&path, "admin")
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("readable by group or others")
                    && error.contains("chmod 600")
                    && error.contains("Delete it"),
                "{error}"
            );
            assert!(
                !error.contains("0123456789abcdef"),
                "never the token itself"
            );
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            load_or_create_token(&path, "admin").unwrap(),
            "0123456789abcdef"
        );
    }

    #[test]
    fn an_empty_token_file_with_a_loose_mode_is_replaced_by_a_new_0600_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let token = load_or_create_token(&path, "admin").unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(
            mode(&path),
            0o600,
            "the secret is never written into the 0644 inode"
        );
    }
}
