//! The development PKI `virtgate up` creates on first start: a users' CA and a backend CA.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::ca::{issue_client, issue_server, ClientRequest, Output, ServerRequest, LOOPBACK};
use crate::files::{ensure_dir, CaFiles, ClientFiles, ServerFiles};
use crate::identity::name_is_covered;
use crate::pem::{certificate_ders, parse_cert};
use crate::roles::{CaRole, DEV_ORGANIZATION};
use crate::rules::parse_certificate;
use crate::{Ca, CaOptions, PkiError};

/// Subdirectory of the data directory that holds the development PKI.
pub const DEV_PKI_DIR: &str = "pki";
/// The gateway's identity towards libvirt hosts (what their `tls_allowed_dn_list` names).
pub const BACKEND_DN: &str = "O=virtgate,CN=virtgate-gateway";
/// The first administrator's identity towards the gateway.
pub const ADMIN_DN: &str = "O=virtgate,CN=admin";
/// Validity of development certificates; long, because nobody renews a dev setup.
pub const DEV_DAYS: u32 = 3650;

/// Subdirectory of the development PKI that holds the users' CA.
pub const USERS_CA_DIR: &str = "ca";
/// Subdirectory of the development PKI that holds the backend CA.
pub const BACKEND_CA_DIR: &str = "backend-ca";

/// Where the development PKI lives, and what this call did.
///
/// Two CAs with two jobs ([`CaRole`]): the users' CA signs people's certificates and the
/// gateway's front-door server certificate; the backend CA signs nothing but the gateway's
/// backend identity, and is the only CA libvirt hosts trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPki {
    /// `<data_dir>/pki`.
    pub root: PathBuf,
    /// `ca/`: the users' (front-door) CA. It signs `admin/`, `server/` and every certificate
    /// `virtgate pki issue client` makes by default; it is the gateway's `client_ca_files`.
    /// Never give it to a libvirt host.
    pub users_ca: CaFiles,
    /// `backend-ca/`: the backend CA. It signs only `backend/`; its `cacert.pem` goes into the
    /// `ca_file` of every libvirt host that should trust the gateway, and nothing else does.
    pub backend_ca: CaFiles,
    /// `server/`: the gateway's TLS server certificate (from the users' CA, so a user's
    /// `cacert.pem` verifies the gateway).
    pub server: ServerFiles,
    /// `backend/`: the client identity ([`BACKEND_DN`]) the gateway presents to libvirt hosts.
    pub backend: ClientFiles,
    /// `admin/`: a client bundle for the first administrator (`?pkipath=<admin dir>`).
    pub admin: ClientFiles,
    /// The directories whose files this call created; empty when everything was reused.
    pub created: Vec<PathBuf>,
    /// Requested names and addresses the existing server certificate does not cover (it was made
    /// on an earlier start for other names). Delete `server/` to have it made again.
    pub not_covered: Vec<String>,
    /// This call replaced a backend identity that did not come from the backend CA: a data
    /// directory from before the split, where one CA (now the users' CA, `ca/`) signed
    /// everything. The old identity is gone; hosts set up for it must now trust
    /// `backend-ca/cacert.pem` instead of `ca/cacert.pem` and allow only [`BACKEND_DN`].
    pub backend_reissued: bool,
}

/// Creates whatever is missing of the development PKI under `<data_dir>/pki/` and reuses what
/// exists, so every later start presents the same certificates and keys. The server
/// certificate covers `hostnames`, `localhost`, `ips`, 127.0.0.1 and ::1.
///
/// A directory made before the users' and the backend CA were split (one CA, `ca/`, for
/// everything) keeps that CA as the users' CA, so admin bundles keep working, and gets a new
/// backend CA with a backend identity re-issued from it ([`DevPki::backend_reissued`]).
pub fn bootstrap_dev(
    data_dir: &Path,
    hostnames: &[String],
    ips: &[IpAddr],
) -> Result<DevPki, PkiError> {
    let root = data_dir.join(DEV_PKI_DIR);
    ensure_dir(&root)?;
    let mut users = Signer::new(&root.join(USERS_CA_DIR), CaRole::Users);
    let mut backend_ca = Signer::new(&root.join(BACKEND_CA_DIR), CaRole::Backend);
    let server = ServerFiles::in_dir(&root.join("server"));
    let backend = ClientFiles::in_dir(&root.join("backend"));
    let admin = ClientFiles::in_dir(&root.join("admin"));
    let incomplete = |reason: String| PkiError::IncompleteDevPki {
        dir: root.clone(),
        reason,
    };

    let have_server = pair_present(&server.cert, &server.key, &incomplete)?;
    let have_backend = pair_present(&backend.cert, &backend.key, &incomplete)?;
    let have_admin = pair_present(&admin.cert, &admin.key, &incomplete)?;
    let orphaned_backend = have_backend && !backend_ca.exists;
    if !users.exists && (have_server || have_admin || orphaned_backend) {
        return Err(incomplete(format!(
            "{} is missing but certificates it issued are still there; restore it, or delete {} \
             to start over (hosts must then be given the new {BACKEND_CA_DIR}/cacert.pem)",
            users.files.dir.display(),
            root.display()
        )));
    }

    let mut names: Vec<String> = hostnames.to_vec();
    names.push("localhost".into());
    let mut addresses: Vec<IpAddr> = ips.to_vec();
    addresses.extend(LOOPBACK);

    let mut created = Vec::new();
    let mut not_covered = Vec::new();
    if have_server {
        not_covered = uncovered(&server.cert, &names, &addresses)?;
    } else {
        let request = ServerRequest {
            name: names[0].clone(),
            dns: names[1..].to_vec(),
            ips: addresses.clone(),
            days: DEV_DAYS,
        };
        issue_server(users.ca(&mut created)?, &request, &Output::new(&server.dir))?;
        created.push(server.dir.clone());
    }
    let backend_reissued = have_backend && !issued_by(&backend.cert, &backend_ca.files.cert);
    if !have_backend || backend_reissued {
        let request = ClientRequest {
            dn: BACKEND_DN.into(),
            days: DEV_DAYS,
        };
        let out = Output {
            replace: backend_reissued,
            ..Output::new(&backend.dir)
        };
        issue_client(backend_ca.ca(&mut created)?, &request, &out)?;
        created.push(backend.dir.clone());
    }
    if !have_admin {
        let request = ClientRequest {
            dn: ADMIN_DN.into(),
            days: DEV_DAYS,
        };
        issue_client(users.ca(&mut created)?, &request, &Output::new(&admin.dir))?;
        created.push(admin.dir.clone());
    }

    Ok(DevPki {
        root,
        users_ca: users.files,
        backend_ca: backend_ca.files,
        server,
        backend,
        admin,
        created,
        not_covered,
        backend_reissued,
    })
}

/// The names and addresses the existing server certificate does not cover.
fn uncovered(cert: &Path, names: &[String], addresses: &[IpAddr]) -> Result<Vec<String>, PkiError> {
    let text = crate::files::read_to_string(cert)?;
    let existing = certificate_ders(&text)
        .ok()
        .and_then(|ders| ders.into_iter().next())
        .and_then(|der| parse_certificate(&der, 0).ok());
    Ok(names
        .iter()
        .cloned()
        .chain(addresses.iter().map(IpAddr::to_string))
        .filter(|n| !existing.as_ref().is_some_and(|c| name_is_covered(c, n)))
        .collect())
}

/// Whether the first certificate in `cert` was signed by the first certificate in `ca_cert`
/// (the signature verifies with its key). Missing or unreadable files: no.
fn issued_by(cert: &Path, ca_cert: &Path) -> bool {
    let first = |path: &Path| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| certificate_ders(&t).ok())
            .and_then(|ders| ders.into_iter().next())
    };
    let (Some(leaf), Some(ca)) = (first(cert), first(ca_cert)) else {
        return false;
    };
    match (parse_cert(&leaf), parse_cert(&ca)) {
        (Ok(leaf), Ok(ca)) => {
            leaf.issuer().as_raw() == ca.subject().as_raw()
                && leaf.verify_signature(Some(ca.public_key())).is_ok()
        }
        _ => false,
    }
}

/// One of the two development CAs, loaded or (on first use) created when something must be
/// signed: a complete PKI is reused as it is, even with a CA that could not sign any more.
struct Signer {
    files: CaFiles,
    role: CaRole,
    exists: bool,
    loaded: Option<Ca>,
}

impl Signer {
    fn new(dir: &Path, role: CaRole) -> Self {
        let files = CaFiles::in_dir(dir);
        let exists = files.cert.exists() || files.key.exists();
        Signer {
            files,
            role,
            exists,
            loaded: None,
        }
    }

    fn ca(&mut self, created: &mut Vec<PathBuf>) -> Result<&Ca, PkiError> {
        if self.loaded.is_none() {
            let ca = if self.exists {
                Ca::load(&self.files.dir)?
            } else {
                created.push(self.files.dir.clone());
                Ca::init_with(
                    &self.files.dir,
                    &CaOptions {
                        organization: DEV_ORGANIZATION.into(),
                        role: Some(self.role),
                        ..CaOptions::default()
                    },
                )?
            };
            self.loaded = Some(ca);
        }
        Ok(self.loaded.as_ref().expect("set above"))
    }
}

/// Whether a certificate and its key are both there; one without the other cannot be used and
/// must not be overwritten blindly.
fn pair_present(
    cert: &Path,
    key: &Path,
    incomplete: &dyn Fn(String) -> PkiError,
) -> Result<bool, PkiError> {
    match (cert.exists(), key.exists()) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        (has_cert, _) => {
            let (there, missing) = if has_cert { (cert, key) } else { (key, cert) };
            Err(incomplete(format!(
                "{} exists without {}; delete {} to have both made again",
                there.display(),
                missing.display(),
                there.display()
            )))
        }
    }
}
