//! The TLS files of the configuration, checked before anything starts or connects: each one
//! readable by this user, holding what its key says (certificates, a key, a CRL), and each key
//! belonging to its certificate. Every problem names the configuration key, the file and what
//! to do — the wording of `virtgate pki check`.

use std::path::{Path, PathBuf};

use anyhow::bail;
use virtgate_pki::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

/// What a file must hold.
#[derive(Clone, Copy)]
enum Holds {
    Certificates,
    Key,
    Crl,
}

/// One file to check: its configuration key, its path, what it must hold.
struct File<'a> {
    key: String,
    path: &'a Path,
    holds: Holds,
}

/// The broker's files: its API certificate and key, its probe identity, the CAs it reads.
pub fn broker_files(config: &Config) -> anyhow::Result<()> {
    let b = &config.broker;
    let mut files = Vec::new();
    let mut pairs = Vec::new();
    push_pair(
        &mut files,
        &mut pairs,
        "broker.tls",
        &b.tls_cert_file,
        &b.tls_key_file,
    );
    push_pair(
        &mut files,
        &mut pairs,
        "broker.client",
        &b.client_cert_file,
        &b.client_key_file,
    );
    for (key, list) in [
        ("broker.trusted_ca_files", &b.trusted_ca_files),
        ("broker.proxy_ca_files", &b.proxy_ca_files),
        ("broker.user_ca_files", &b.user_ca_files),
    ] {
        push_list(&mut files, key, list);
    }
    if let Some(path) = &b.user_ca_key_file {
        files.push(file("broker.user_ca_key_file", path, Holds::Key));
    }
    report(&files, &pairs)
}

/// The gateway's files: its server certificate and key, the client CAs and CRL, its backend
/// identity, the CA it verifies a followed broker with.
pub fn proxy_files(config: &Config) -> anyhow::Result<()> {
    let p = &config.proxy;
    let mut files = Vec::new();
    let mut pairs = Vec::new();
    push_pair(
        &mut files,
        &mut pairs,
        "proxy.server",
        &p.server_cert_file,
        &p.server_key_file,
    );
    push_pair(
        &mut files,
        &mut pairs,
        "proxy.backend",
        &p.backend_cert_file,
        &p.backend_key_file,
    );
    push_list(&mut files, "proxy.client_ca_files", &p.client_ca_files);
    if let Some(path) = &p.crl_file {
        files.push(file("proxy.crl_file", path, Holds::Crl));
    }
    if let Some(path) = &p.broker_ca_file {
        files.push(file("proxy.broker_ca_file", path, Holds::Certificates));
    }
    report(&files, &pairs)
}

fn file<'a>(key: &str, path: &'a Path, holds: Holds) -> File<'a> {
    File {
        key: key.to_string(),
        path,
        holds,
    }
}

type Pair<'a> = (File<'a>, File<'a>);

fn push_pair<'a>(
    files: &mut Vec<File<'a>>,
    pairs: &mut Vec<Pair<'a>>,
    prefix: &str,
    cert: &'a Option<PathBuf>,
    key: &'a Option<PathBuf>,
) {
    let cert_key = format!("{prefix}_cert_file");
    let key_key = format!("{prefix}_key_file");
    match (cert, key) {
        (Some(c), Some(k)) => pairs.push((
            file(&cert_key, c, Holds::Certificates),
            file(&key_key, k, Holds::Key),
        )),
        (Some(c), None) => files.push(file(&cert_key, c, Holds::Certificates)),
        (None, Some(k)) => files.push(file(&key_key, k, Holds::Key)),
        (None, None) => {}
    }
}

fn push_list<'a>(files: &mut Vec<File<'a>>, key: &str, list: &'a [PathBuf]) {
    for path in list {
        files.push(file(key, path, Holds::Certificates));
    }
}

/// Every problem with `files` and `pairs`, as one error.
fn report(files: &[File<'_>], pairs: &[Pair<'_>]) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for f in files {
        if let Err(p) = read(f) {
            problems.push(p);
        }
    }
    for (cert, key) in pairs {
        match (read(cert), read(key)) {
            (Ok(Read::Certificates(chain)), Ok(Read::Key(k))) => {
                if let Err(why) = key_matches(&chain[0], k) {
                    problems.push(format!(
                        "{} = {}: {why} {} = {}; restore the matching pair or issue both again",
                        key.key,
                        key.path.display(),
                        cert.key,
                        cert.path.display()
                    ));
                }
            }
            (c, k) => problems.extend(c.err().into_iter().chain(k.err())),
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    bail!(
        "unusable TLS files:\n  {}\nfix the files (or the keys naming them) and start again; `virtgate pki check FILE` says more about each",
        problems.join("\n  ")
    )
}

enum Read {
    Certificates(Vec<CertificateDer<'static>>),
    Key(PrivateKeyDer<'static>),
    Crl,
}

/// The OS's reason without the "(os error N)" tail.
pub fn os_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

fn read(f: &File<'_>) -> Result<Read, String> {
    let at = format!("{} = {}", f.key, f.path.display());
    if let Err(e) = std::fs::File::open(f.path) {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            "run virtgate as a user that may read it, or give that user access (keys: mode 0600, owned by that user)"
        } else {
            "check the path"
        };
        return Err(format!("{at}: cannot read it ({}); {hint}", os_reason(&e)));
    }
    let problem = |e: virtgate_pki::PemError| {
        let text = e.to_string();
        let shown = f.path.display().to_string();
        let text = text.strip_prefix(&shown).unwrap_or(&text);
        format!("{at}: {}", text.trim_start_matches([':', ' ']))
    };
    match f.holds {
        Holds::Certificates => virtgate_pki::read_certs(f.path)
            .map(Read::Certificates)
            .map_err(problem),
        Holds::Key => virtgate_pki::read_key(f.path)
            .map(Read::Key)
            .map_err(problem),
        Holds::Crl => virtgate_pki::read_crls(f.path)
            .map(|_| Read::Crl)
            .map_err(problem),
    }
}

/// Whether `key` is the private half of `cert`'s public key.
fn key_matches(cert: &CertificateDer<'_>, key: PrivateKeyDer<'static>) -> Result<(), String> {
    use virtgate_pki::x509_parser::prelude::{FromDer, X509Certificate};
    let signing = virtgate_pki::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("is not a key TLS can use ({e}), so it cannot go with"))?;
    let Some(public) = signing.public_key() else {
        return Ok(()); // the format does not say; the handshake will
    };
    let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) else {
        return Ok(()); // reported as unparsable elsewhere
    };
    if parsed.public_key().raw == public.as_ref() {
        Ok(())
    } else {
        Err("does not belong to the certificate (different public key) of".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let ca = virtgate_pki::Ca::init(&dir.join(format!("{name}-ca"))).unwrap();
        let out = dir.join(name);
        virtgate_pki::issue_server(
            &ca,
            &virtgate_pki::ServerRequest::new("gw"),
            &virtgate_pki::Output::new(&out),
        )
        .unwrap();
        (out.join("servercert.pem"), out.join("serverkey.pem"))
    }

    #[test]
    fn a_key_of_another_certificate_and_a_missing_file_are_named_by_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = pair(dir.path(), "a");
        let (_, other_key) = pair(dir.path(), "b");
        let mut config = Config::default();
        config.proxy.server_cert_file = Some(cert.clone());
        config.proxy.server_key_file = Some(other_key.clone());
        config.proxy.client_ca_files = vec![dir.path().join("nowhere.pem")];
        let text = proxy_files(&config).unwrap_err().to_string();
        assert!(
            text.contains(&format!(
                "proxy.server_key_file = {}: does not belong to the certificate (different public key) of proxy.server_cert_file = {}",
                other_key.display(),
                cert.display()
            )),
            "{text}"
        );
        assert!(
            text.contains("proxy.client_ca_files = ")
                && text.contains("cannot read it (No such file or directory); check the path"),
            "{text}"
        );
        assert!(!text.contains("os error"), "{text}");
    }

    #[test]
    fn a_matching_pair_passes() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "a");
        let mut config = Config::default();
        config.broker.tls_cert_file = Some(cert);
        config.broker.tls_key_file = Some(key);
        broker_files(&config).unwrap();
    }
}
