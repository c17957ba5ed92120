//! Where a running broker can be found from anywhere, and who owns a data directory.
//!
//! `virtgate up` and `virtgate broker` write `broker.json` into a well-known runtime directory
//! (`$VIRTGATE_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/virtgate`, else `/run/virtgate` for root,
//! else `/tmp/virtgate-<uid>`): the API's URL, the CA or pin that verifies it, the token files,
//! the data directory and the configuration file, all absolute. Client commands (`hosts`,
//! `certs`, `pki`) started without `--config` read it, so they work from any directory.
//!
//! A data directory belongs to one process at a time: `virtgate.lock` in it is locked for the
//! process's life (released by the kernel however the process ends) and names the holder.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// The file in the runtime directory.
pub const RUNTIME_FILE: &str = "broker.json";
/// The lock file in the data directory.
pub const LOCK_FILE: &str = "virtgate.lock";

/// A running broker, as `up`/`broker` describe it for client commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    pub pid: u32,
    /// `up` or `broker`.
    pub command: String,
    /// The API's base URL, e.g. `https://127.0.0.1:16580`.
    pub api: String,
    /// The CA that verifies the API's certificate (`up`'s development CA), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_ca_file: Option<PathBuf>,
    /// The pin of the API's key (`broker.tls_cert_file` of your own), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_pin: Option<String>,
    pub admin_token_file: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_token_file: Option<PathBuf>,
    pub data_dir: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_file: Option<PathBuf>,
    pub started_at: i64,
}

/// `path` made absolute against the working directory (without resolving links).
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The runtime directory for this user, if one can be used.
pub fn runtime_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("VIRTGATE_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("virtgate"));
    }
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    Some(if uid == 0 {
        PathBuf::from("/run/virtgate")
    } else {
        std::env::temp_dir().join(format!("virtgate-{uid}"))
    })
}

/// Creates the runtime directory (0700) and checks nobody else owns or can write it.
fn prepare_runtime_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let meta = std::fs::metadata(dir)?;
    let me = std::fs::metadata("/proc/self")?.uid();
    if meta.uid() != me || meta.permissions().mode() & 0o022 != 0 {
        bail!(
            "{} belongs to another user or others may write it; set VIRTGATE_RUNTIME_DIR to a directory of your own",
            dir.display()
        );
    }
    Ok(())
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Reads the runtime file in `dir`, if it names a process that still runs.
fn read_live(dir: &Path) -> Option<RuntimeInfo> {
    let text = std::fs::read_to_string(dir.join(RUNTIME_FILE)).ok()?;
    let info: RuntimeInfo = serde_json::from_str(&text).ok()?;
    alive(info.pid).then_some(info)
}

/// The running broker this user's client commands should talk to: the runtime file of this
/// user, else the system one (`/run/virtgate`, written by a broker running as root). A
/// `VIRTGATE_RUNTIME_DIR` set explicitly is the only place looked at: whoever sets it means that
/// broker and no other.
pub fn find() -> Option<RuntimeInfo> {
    let explicit = std::env::var_os("VIRTGATE_RUNTIME_DIR").is_some_and(|d| !d.is_empty());
    let mine = runtime_dir();
    let system = PathBuf::from("/run/virtgate");
    let fallback = (!explicit).then_some(&system);
    mine.iter().chain(fallback).find_map(|dir| read_live(dir))
}

static FOUND: OnceLock<RuntimeInfo> = OnceLock::new();

/// Remembers the running broker a client command found, for [`found`].
pub fn remember(info: RuntimeInfo) {
    let _ = FOUND.set(info);
}

/// The running broker found at start, if the command looked for one.
pub fn found() -> Option<&'static RuntimeInfo> {
    FOUND.get()
}

/// The runtime file while this process owns it; removed when dropped.
pub struct Published {
    path: PathBuf,
}

impl Drop for Published {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| serde_json::from_str::<RuntimeInfo>(&t).ok())
            .is_some_and(|i| i.pid == std::process::id());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes `info` as the runtime file, unless another live broker's is there. Returns why not
/// when it cannot (the caller warns and goes on: client commands then need `--config`).
pub fn publish(info: &RuntimeInfo) -> Result<Published, String> {
    let dir = runtime_dir().ok_or("no runtime directory (set VIRTGATE_RUNTIME_DIR)")?;
    prepare_runtime_dir(&dir).map_err(|e| format!("{e:#}"))?;
    let path = dir.join(RUNTIME_FILE);
    if let Some(other) = read_live(&dir).filter(|o| o.pid != info.pid) {
        return Err(format!(
            "{} names another running virtgate (pid {}, data directory {}); client commands find that one unless given --config",
            path.display(),
            other.pid,
            other.data_dir.display()
        ));
    }
    let text = serde_json::to_string_pretty(info).map_err(|e| e.to_string())?;
    virtgate_pki::write_private_file(&path, text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(Published { path })
}

/// The data directory's lock, held for the life of the process.
pub struct DataDirLock {
    _file: File,
}

/// Creates `data_dir` (0700) if needed and locks it for this process; another process holding
/// it is an error that names it.
pub fn lock_data_dir(data_dir: &Path, command: &str) -> anyhow::Result<DataDirLock> {
    if !data_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .with_context(|| {
                format!(
                    "cannot create the data directory {}; set broker.data_dir / --data-dir to a writable place",
                    absolute(data_dir).display()
                )
            })?;
    }
    let path = data_dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", absolute(&path).display()))?;
    match fs4::fs_std::FileExt::try_lock_exclusive(&file) {
        Ok(true) => {}
        Ok(false) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            bail!(
                "the data directory {} is in use by another virtgate ({}); two processes must not share one inventory: stop that one, or give this one another directory (--data-dir, broker.data_dir)",
                absolute(data_dir).display(),
                if holder.is_empty() { "pid unknown" } else { holder }
            );
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot lock {}", absolute(&path).display()))
        }
    }
    file.set_len(0)?;
    writeln!(file, "pid {}, `virtgate {command}`", std::process::id())?;
    Ok(DataDirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_is_locked_once_and_the_refusal_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let held = lock_data_dir(&data, "up").unwrap();
        // Another open file description of the same file: what a second process gets.
        let second = lock_data_dir(&data, "broker").err().unwrap().to_string();
        assert!(
            second.contains(&format!("pid {}", std::process::id()))
                && second.contains("virtgate up")
                && second.contains("--data-dir"),
            "{second}"
        );
        drop(held);
        assert!(lock_data_dir(&data, "broker").is_ok(), "free once released");
    }
}
