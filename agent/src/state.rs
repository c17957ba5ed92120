//! The state directory (0700; every file 0600, replaced atomically):
//!
//! - `key.pem`, `cert.pem`: the agent's key pair and a self-signed certificate for it, made at
//!   first start and kept, so its pin never changes (the certificate is re-issued for the same
//!   key when less than a year is left);
//! - `opaque-keys`: the OPAQUE server keys (hex);
//! - `enrollment.json`: after enrollment, the host name, the gateway keys it accepts and the
//!   OPAQUE registration record of each per-host secret generation — never a secret itself.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use virtgate_pake::{Record, ServerKeys};
use virtgate_pki::Pin;

use crate::AgentError;

const KEY: &str = "key.pem";
const CERT: &str = "cert.pem";
const OPAQUE_KEYS: &str = "opaque-keys";
const ENROLLMENT: &str = "enrollment.json";
/// How long the previous per-host secret stays valid after a rotation, so gateways whose
/// mounted secret directory has not caught up yet keep working (Kubernetes refreshes mounted
/// Secrets within about a minute).
pub const PREVIOUS_SECRET_GRACE_SECS: i64 = 600;
/// Validity of the self-signed certificate; it is re-issued for the same key when less than a
/// year is left.
const CERT_DAYS: i64 = 3650;
const RENEW_WITHIN_DAYS: i64 = 365;

/// The agent's identity: its certificate chain (one self-signed certificate), key and pin.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub pin: Pin,
}

/// One generation of the per-host secret, as the agent keeps it: the OPAQUE record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSecret {
    pub generation: u32,
    /// The OPAQUE registration record (hex): lets the agent check a proof, not make one.
    pub record: String,
    /// Unix seconds after which this generation is no longer accepted (set on the previous
    /// generation when a new one is registered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_after: Option<i64>,
}

/// What enrollment left, and rotations changed since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    /// The name the gateway knows this host by.
    pub host: String,
    /// SPKI SHA-256 of each gateway key accepted.
    pub gateway_pins: Vec<Pin>,
    pub secrets: Vec<StoredSecret>,
    /// Unix seconds.
    pub enrolled_at: i64,
}

impl Enrollment {
    /// The record of `generation`, if it is still accepted at `now`.
    pub fn record(&self, generation: u32, now: i64) -> Option<Record> {
        self.secrets
            .iter()
            .find(|s| s.generation == generation && s.retire_after.is_none_or(|t| now <= t))
            .and_then(|s| hex::decode(&s.record).ok())
            .and_then(|bytes| Record::from_bytes(&bytes).ok())
    }

    /// The newest generation.
    pub fn current_generation(&self) -> u32 {
        self.secrets.iter().map(|s| s.generation).max().unwrap_or(0)
    }

    /// Adds `record` as `generation`: the previous one is retired after the grace period,
    /// older ones are dropped.
    pub fn rotate(&mut self, generation: u32, record: &Record, now: i64) {
        let current = self.current_generation();
        self.secrets.retain(|s| s.generation == current);
        for s in &mut self.secrets {
            s.retire_after = Some(now + PREVIOUS_SECRET_GRACE_SECS);
        }
        self.secrets.push(StoredSecret {
            generation,
            record: hex::encode(record.to_bytes()),
            retire_after: None,
        });
    }
}

/// The state directory.
pub struct State {
    dir: PathBuf,
}

impl State {
    /// Opens `dir`, creating it (0700) if needed. A directory others may read is refused: it
    /// holds the agent's private key.
    pub fn open(dir: &Path) -> Result<State, AgentError> {
        let err = |e: std::io::Error| AgentError::State {
            path: dir.display().to_string(),
            source: e,
        };
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(err)?;
        }
        let mode = std::fs::metadata(dir).map_err(err)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(AgentError::StateExposed {
                path: dir.display().to_string(),
                mode: mode & 0o777,
            });
        }
        Ok(State {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn err(&self, name: &str) -> impl Fn(std::io::Error) -> AgentError + '_ {
        let path = self.dir.join(name).display().to_string();
        move |source| AgentError::State {
            path: path.clone(),
            source,
        }
    }

    /// Writes `name` (0600) through a temporary file and a rename.
    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), AgentError> {
        virtgate_pki::write_private_file(&self.dir.join(name), bytes).map_err(self.err(name))
    }

    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, AgentError> {
        match std::fs::read(self.dir.join(name)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(name)(e)),
        }
    }

    /// The agent's key pair and certificate: made at first start, read back afterwards, the
    /// certificate re-issued for the same key when it nears its end.
    pub fn identity(&self, hostname: &str) -> Result<Identity, AgentError> {
        let key_pem = match self.read(KEY)? {
            Some(pem) => String::from_utf8(pem).map_err(|_| self.corrupt(KEY))?,
            None => {
                let key = rcgen::KeyPair::generate().map_err(|e| self.generate(e))?;
                let pem = key.serialize_pem();
                self.write(KEY, pem.as_bytes())?;
                tracing::info!(path = %self.dir.join(KEY).display(), "created the agent's key pair");
                pem
            }
        };
        let key_pair = rcgen::KeyPair::from_pem(&key_pem).map_err(|_| self.corrupt(KEY))?;
        let cert_path = self.dir.join(CERT);
        let fresh = virtgate_pki::read_certs(&cert_path)
            .ok()
            .and_then(|chain| chain.into_iter().next())
            .filter(|cert| lasts(cert, RENEW_WITHIN_DAYS) && same_key(cert, &key_pair));
        let cert = match fresh {
            Some(cert) => cert,
            None => {
                let cert = self_signed(&key_pair, hostname).map_err(|e| self.generate(e))?;
                self.write(CERT, cert.pem().as_bytes())?;
                cert.der().clone()
            }
        };
        let key = virtgate_pki::read_key(&self.dir.join(KEY)).map_err(|_| self.corrupt(KEY))?;
        let pin = virtgate_pki::spki_pin(&cert).map_err(|_| self.corrupt(CERT))?;
        Ok(Identity {
            chain: vec![cert],
            key,
            pin,
        })
    }

    /// The OPAQUE server keys: made at first start, read back afterwards.
    pub fn server_keys(&self) -> Result<ServerKeys, AgentError> {
        if let Some(text) = self.read(OPAQUE_KEYS)? {
            let bytes = hex::decode(String::from_utf8_lossy(&text).trim())
                .map_err(|_| self.corrupt(OPAQUE_KEYS))?;
            return ServerKeys::from_bytes(&bytes).map_err(|_| self.corrupt(OPAQUE_KEYS));
        }
        let keys = ServerKeys::generate();
        self.write(OPAQUE_KEYS, hex::encode(keys.to_bytes()).as_bytes())?;
        Ok(keys)
    }

    pub fn enrollment(&self) -> Result<Option<Enrollment>, AgentError> {
        match self.read(ENROLLMENT)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|_| self.corrupt(ENROLLMENT)),
        }
    }

    pub fn save_enrollment(&self, enrollment: &Enrollment) -> Result<(), AgentError> {
        let json = serde_json::to_vec_pretty(enrollment).expect("enrollment serialises");
        self.write(ENROLLMENT, &json)
    }

    fn corrupt(&self, name: &str) -> AgentError {
        AgentError::Corrupt {
            path: self.dir.join(name).display().to_string(),
        }
    }

    fn generate(&self, e: rcgen::Error) -> AgentError {
        AgentError::Generate(e.to_string())
    }
}

/// Whether `cert` is valid for more than `days` from now.
fn lasts(cert: &CertificateDer<'_>, days: i64) -> bool {
    use virtgate_pki::x509_parser::prelude::{FromDer, X509Certificate};
    let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) else {
        return false;
    };
    let left = parsed.validity().not_after.timestamp() - now_unix();
    left > days * 86400
}

/// Whether `cert` certifies `key`.
fn same_key(cert: &CertificateDer<'_>, key: &rcgen::KeyPair) -> bool {
    use rcgen::PublicKeyData;
    virtgate_pki::spki_pin(cert).ok() == Some(Pin::of_spki(&key.subject_public_key_info()))
}

fn self_signed(key: &rcgen::KeyPair, hostname: &str) -> Result<rcgen::Certificate, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_string()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "virtgate agent");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(CERT_DAYS);
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.self_signed(key)
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_and_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let first = State::open(&path).unwrap().identity("h1").unwrap();
        let again = State::open(&path).unwrap().identity("h1").unwrap();
        assert_eq!(first.pin, again.pin);
        assert_eq!(
            first.chain, again.chain,
            "a certificate with years left is kept"
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o700);
        for f in [KEY, CERT] {
            assert_eq!(mode(&path.join(f)), 0o600, "{f}");
        }
        let keys = State::open(&path)
            .unwrap()
            .server_keys()
            .unwrap()
            .to_bytes();
        assert_eq!(
            State::open(&path)
                .unwrap()
                .server_keys()
                .unwrap()
                .to_bytes(),
            keys
        );
    }

    #[test]
    fn a_state_directory_others_may_read_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let Err(e) = State::open(dir.path()) else {
            panic!("must refuse");
        };
        assert!(e.to_string().contains("chmod 700"), "{e}");
    }

    #[test]
    fn after_a_rotation_the_previous_secret_is_accepted_only_for_the_grace_period() {
        let keys = ServerKeys::generate();
        let rec = |s: &[u8], g| {
            Record::register(&keys, s, &virtgate_pake::driver::credential_for(g)).unwrap()
        };
        let mut e = Enrollment {
            host: "h1".into(),
            gateway_pins: vec![],
            secrets: vec![],
            enrolled_at: 0,
        };
        e.rotate(1, &rec(b"0123456789abcdef", 1), 100);
        e.rotate(2, &rec(b"fedcba9876543210", 2), 200);
        assert_eq!(e.current_generation(), 2);
        assert!(e.record(1, 200 + PREVIOUS_SECRET_GRACE_SECS).is_some());
        assert!(e.record(1, 201 + PREVIOUS_SECRET_GRACE_SECS).is_none());
        assert!(e.record(2, i64::MAX).is_some());
        e.rotate(3, &rec(b"0011223344556677", 3), 300);
        assert_eq!(
            e.secrets.iter().map(|s| s.generation).collect::<Vec<_>>(),
            vec![2, 3],
            "only the previous generation is kept"
        );
    }
}
