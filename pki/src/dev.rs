//! The development PKI `virtgate up` creates on first start.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::ca::{issue_client, issue_server, ClientRequest, Output, ServerRequest, LOOPBACK};
use crate::files::{ensure_dir, CaFiles, ClientFiles, ServerFiles};
use crate::identity::name_is_covered;
use crate::pem::certificate_ders;
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

/// Where the development PKI lives, and what this call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPki {
    /// `<data_dir>/pki`.
    pub root: PathBuf,
    /// `ca/`: the development CA. Its `cacert.pem` goes to every libvirt host that should trust
    /// the gateway.
    pub ca: CaFiles,
    /// `server/`: the gateway's TLS server certificate.
    pub server: ServerFiles,
    /// `backend/`: the client identity the gateway presents to libvirt hosts.
    pub backend: ClientFiles,
    /// `admin/`: a client bundle for the first administrator (`?pkipath=<admin dir>`).
    pub admin: ClientFiles,
    /// The directories whose files this call created; empty when everything was reused.
    pub created: Vec<PathBuf>,
    /// Requested names and addresses the existing server certificate does not cover (it was made
    /// on an earlier start for other names). Delete `server/` to have it made again.
    pub not_covered: Vec<String>,
}

/// Creates whatever is missing of the development PKI under `<data_dir>/pki/` and reuses what
/// exists, so every later start presents the same certificates and keys. The server
/// certificate covers `hostnames`, `localhost`, `ips`, 127.0.0.1 and ::1.
pub fn bootstrap_dev(
    data_dir: &Path,
    hostnames: &[String],
    ips: &[IpAddr],
) -> Result<DevPki, PkiError> {
    let root = data_dir.join(DEV_PKI_DIR);
    ensure_dir(&root)?;
    let ca_files = CaFiles::in_dir(&root.join("ca"));
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
    let have_ca = ca_files.cert.exists() || ca_files.key.exists();
    if !have_ca && (have_server || have_backend || have_admin) {
        return Err(incomplete(format!(
            "{} is missing but certificates it issued are still there; restore it, or delete {} \
             to start over (hosts must then be given the new cacert.pem)",
            ca_files.dir.display(),
            root.display()
        )));
    }

    let mut names: Vec<String> = hostnames.to_vec();
    names.push("localhost".into());
    let mut addresses: Vec<IpAddr> = ips.to_vec();
    addresses.extend(LOOPBACK);

    let mut created = Vec::new();
    // Loaded only when something must be signed: a complete PKI is reused as it is, even with
    // a CA that could not sign any more.
    let mut ca: Option<Ca> = None;

    let mut not_covered = Vec::new();
    if have_server {
        let text = crate::files::read_to_string(&server.cert)?;
        let existing = certificate_ders(&text)
            .ok()
            .and_then(|ders| ders.into_iter().next())
            .and_then(|der| parse_certificate(&der, 0).ok());
        not_covered = names
            .iter()
            .cloned()
            .chain(addresses.iter().map(IpAddr::to_string))
            .filter(|n| !existing.as_ref().is_some_and(|c| name_is_covered(c, n)))
            .collect();
    } else {
        let signer = signer(&mut ca, have_ca, &ca_files, &mut created)?;
        let request = ServerRequest {
            name: names[0].clone(),
            dns: names[1..].to_vec(),
            ips: addresses.clone(),
            days: DEV_DAYS,
        };
        issue_server(signer, &request, &Output::new(&server.dir))?;
        created.push(server.dir.clone());
    }
    for (files, present, dn) in [
        (&backend, have_backend, BACKEND_DN),
        (&admin, have_admin, ADMIN_DN),
    ] {
        if present {
            continue;
        }
        let signer = signer(&mut ca, have_ca, &ca_files, &mut created)?;
        let request = ClientRequest {
            dn: dn.into(),
            days: DEV_DAYS,
        };
        issue_client(signer, &request, &Output::new(&files.dir))?;
        created.push(files.dir.clone());
    }

    Ok(DevPki {
        root,
        ca: ca_files,
        server,
        backend,
        admin,
        created,
        not_covered,
    })
}

/// The CA, loaded or (on first start) created on first use.
fn signer<'a>(
    slot: &'a mut Option<Ca>,
    have_ca: bool,
    files: &CaFiles,
    created: &mut Vec<PathBuf>,
) -> Result<&'a Ca, PkiError> {
    if slot.is_none() {
        let ca = if have_ca {
            Ca::load(&files.dir)?
        } else {
            created.push(files.dir.clone());
            Ca::init_with(
                &files.dir,
                &CaOptions {
                    organization: "virtgate-dev".into(),
                    ..CaOptions::default()
                },
            )?
        };
        *slot = Some(ca);
    }
    Ok(slot.as_ref().expect("set above"))
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
