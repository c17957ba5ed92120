//! libvirt's file names and the careful writing of certificate and key files.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::PkiError;

/// CA certificate (or bundle of CA certificates) in every layout.
pub const CA_CERT: &str = "cacert.pem";
/// CA private key, only in a CA directory.
pub const CA_KEY: &str = "cakey.pem";
/// Server certificate (libvirtd's `cert_file`).
pub const SERVER_CERT: &str = "servercert.pem";
/// Server private key (libvirtd's `key_file`).
pub const SERVER_KEY: &str = "serverkey.pem";
/// Client certificate in a `?pkipath=DIR` directory.
pub const CLIENT_CERT: &str = "clientcert.pem";
/// Client private key in a `?pkipath=DIR` directory.
pub const CLIENT_KEY: &str = "clientkey.pem";

/// Mode of every private key file.
pub const KEY_MODE: u32 = 0o600;
/// Mode of certificate files: public, and libvirt clients run as ordinary users.
pub const CERT_MODE: u32 = 0o644;
/// Mode of directories this crate creates.
pub const DIR_MODE: u32 = 0o700;

/// The files of a CA directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFiles {
    pub dir: PathBuf,
    /// `cacert.pem`: copy this to every machine that must trust the CA.
    pub cert: PathBuf,
    /// `cakey.pem` (0600): never leaves this machine.
    pub key: PathBuf,
}

impl CaFiles {
    pub fn in_dir(dir: &Path) -> Self {
        CaFiles {
            dir: dir.to_path_buf(),
            cert: dir.join(CA_CERT),
            key: dir.join(CA_KEY),
        }
    }
}

/// The files of a libvirt server directory (libvirtd's `cert_file`, `key_file`, `ca_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    /// 0600.
    pub key: PathBuf,
}

impl ServerFiles {
    pub fn in_dir(dir: &Path) -> Self {
        ServerFiles {
            dir: dir.to_path_buf(),
            ca_cert: dir.join(CA_CERT),
            cert: dir.join(SERVER_CERT),
            key: dir.join(SERVER_KEY),
        }
    }
}

/// The files of a libvirt client `pkipath` directory (`qemu+tls://host/system?pkipath=DIR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFiles {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    /// 0600.
    pub key: PathBuf,
}

impl ClientFiles {
    pub fn in_dir(dir: &Path) -> Self {
        ClientFiles {
            dir: dir.to_path_buf(),
            ca_cert: dir.join(CA_CERT),
            cert: dir.join(CLIENT_CERT),
            key: dir.join(CLIENT_KEY),
        }
    }

    /// The URI query parameter that points a libvirt client at this directory.
    pub fn pkipath_query(&self) -> String {
        format!("pkipath={}", self.dir.display())
    }
}

/// Creates `dir` (and missing parents) as 0700. An existing directory keeps its mode: it may
/// be shared, e.g. `/etc/pki/CA`, whose `cacert.pem` unprivileged clients must read.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), PkiError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| PkiError::io("create the directory", dir, source))
}

/// How to treat a file that is already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Existing {
    Refuse,
    Replace,
}

/// Writes `contents` to `path` with exactly `mode`.
///
/// New files are created with `mode` from the first byte on, so a key is never readable by
/// others, not even for an instant. Replacements go through a temporary file and a rename, so a
/// reader (libvirtd restarting) sees either the old or the new file, never half of one.
pub(crate) fn write_file(
    path: &Path,
    contents: &str,
    mode: u32,
    existing: Existing,
) -> Result<(), PkiError> {
    match existing {
        Existing::Refuse => {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(path)
                .map_err(|source| {
                    if source.kind() == std::io::ErrorKind::AlreadyExists {
                        PkiError::Exists {
                            path: path.to_path_buf(),
                        }
                    } else {
                        PkiError::io("create", path, source)
                    }
                })?;
            // The umask may have removed bits from `mode`; certificates must stay readable.
            f.set_permissions(fs::Permissions::from_mode(mode))
                .and_then(|()| f.write_all(contents.as_bytes()))
                .and_then(|()| f.sync_all())
                .map_err(|source| PkiError::io("write", path, source))
        }
        Existing::Replace => {
            let tmp = temp_name(path);
            let _ = fs::remove_file(&tmp);
            write_file(&tmp, contents, mode, Existing::Refuse)?;
            fs::rename(&tmp, path).map_err(|source| {
                let _ = fs::remove_file(&tmp);
                PkiError::io("replace", path, source)
            })
        }
    }
}

/// Writes `bytes` to `path` as a private file: mode 0600 whatever the umask, from the first byte
/// on; through a temporary file beside it (named for this process, so two processes writing the
/// same file do not share one) and a rename, so a reader sees the old or the new file, never half
/// of one. The file and then its directory are synced. For every secret or state file virtgate
/// keeps: tokens, host secrets and credentials, users, the agent's state, caches.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(KEY_MODE)
        .open(&tmp)
        .and_then(|mut file| {
            file.set_permissions(fs::Permissions::from_mode(KEY_MODE))?;
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if let Some(dir) = path.parent().and_then(|d| fs::File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.virtgate-tmp"))
}

pub(crate) fn read_to_string(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::io("read", path, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_file_is_0600_replaces_the_old_one_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        fs::write(&path, "old, readable by all").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_private_file(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("secret")]);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: the rename fails.
        let path = dir.path().join("taken");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), "kept").unwrap();
        assert!(write_private_file(&path, b"new").is_err());
        assert_eq!(fs::read(path.join("inside")).unwrap(), b"kept");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
