//! Reading certificates, keys and CRLs from PEM files, through rustls-pki-types' `PemObject`.
//!
//! Every block is decoded or the read fails naming the block: a bundle whose second certificate
//! is damaged must not quietly become a bundle of one.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::{self, PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// Why a certificate, key or CRL file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error(
        "cannot read {}: {source}; check the path and that this user may read the file",
        path.display()
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: PEM block {block} is malformed ({reason}); restore the file from where it was \
         issued, or issue it again",
        path.display()
    )]
    Malformed {
        path: PathBuf,
        /// 1-based, counting the certificate, key and CRL blocks of the file.
        block: usize,
        reason: String,
    },
    #[error(
        "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----); point at the certificate \
         file, not at its key",
        path.display()
    )]
    NoCertificate { path: PathBuf },
    #[error(
        "{} holds no PEM private key (\"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE \
         KEY\"); point at the key file that belongs to the certificate",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error(
        "{} holds an encrypted private key, and nothing here can ask for its passphrase; store \
         it decrypted with mode 0600",
        path.display()
    )]
    EncryptedKey { path: PathBuf },
    #[error(
        "{} holds no certificate revocation list (PEM \"X509 CRL\" or DER); point at the CRL \
         your CA publishes",
        path.display()
    )]
    NoCrl { path: PathBuf },
}

impl PemError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            PemError::Read { path, .. }
            | PemError::Malformed { path, .. }
            | PemError::NoCertificate { path }
            | PemError::NoKey { path }
            | PemError::EncryptedKey { path }
            | PemError::NoCrl { path } => path,
        }
    }
}

/// A PEM block that cannot be decoded, before it is attached to a file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MalformedBlock {
    /// 1-based, counting the blocks with a label rustls-pki-types knows.
    pub block: usize,
    pub reason: String,
}

impl std::fmt::Display for MalformedBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed PEM block {} ({})", self.block, self.reason)
    }
}

/// Every certificate, key, CRL (and other known) block in `data`, in file order. Blocks with
/// unknown labels are skipped; the first one that cannot be decoded is an error.
pub(crate) fn pem_sections(data: &[u8]) -> Result<Vec<(SectionKind, Vec<u8>)>, MalformedBlock> {
    let mut sections = Vec::new();
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(data) {
        match item {
            Ok(section) => sections.push(section),
            Err(e) => {
                return Err(MalformedBlock {
                    block: sections.len() + 1,
                    reason: describe(&e),
                })
            }
        }
    }
    Ok(sections)
}

fn describe(error: &pem::Error) -> String {
    match error {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "no -----END {}----- line",
            String::from_utf8_lossy(end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => {
            format!("bad BEGIN line {:?}", String::from_utf8_lossy(line))
        }
        other => other.to_string(),
    }
}

/// Whether `data` holds a private key that is encrypted: PKCS#8 `ENCRYPTED PRIVATE KEY`, or a
/// legacy PEM key with `Proc-Type: 4,ENCRYPTED`. rustls-pki-types skips the first and cannot
/// decode the second, so they are told apart here to say what is actually wrong.
pub(crate) fn encrypted_key_present(data: &[u8]) -> bool {
    String::from_utf8_lossy(data).lines().any(|line| {
        let line = line.trim();
        line == "-----BEGIN ENCRYPTED PRIVATE KEY-----" || line == "Proc-Type: 4,ENCRYPTED"
    })
}

fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|source| PemError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn sections_of(path: &Path, data: &[u8]) -> Result<Vec<(SectionKind, Vec<u8>)>, PemError> {
    pem_sections(data).map_err(|m| PemError::Malformed {
        path: path.to_path_buf(),
        block: m.block,
        reason: m.reason,
    })
}

/// Every certificate in a PEM file, in file order (a leaf followed by its chain, or a CA
/// bundle). At least one, or an error.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let data = read(path)?;
    let certs: Vec<CertificateDer<'static>> = sections_of(path, &data)?
        .into_iter()
        .filter_map(|(kind, der)| CertificateDer::from_pem(kind, der))
        .collect();
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let data = read(path)?;
    // Before decoding: a legacy encrypted key does not decode, and "malformed" would mislead.
    if encrypted_key_present(&data) {
        return Err(PemError::EncryptedKey {
            path: path.to_path_buf(),
        });
    }
    sections_of(path, &data)?
        .into_iter()
        .find_map(|(kind, der)| PrivateKeyDer::from_pem(kind, der))
        .ok_or_else(|| PemError::NoKey {
            path: path.to_path_buf(),
        })
}

/// The CRLs in a file: every `X509 CRL` block of a PEM file, or the whole file as one DER CRL.
pub fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, PemError> {
    let data = read(path)?;
    let sections = sections_of(path, &data)?;
    if sections.is_empty() {
        // No PEM at all: DER, which starts with a SEQUENCE tag.
        if data.first() == Some(&0x30) {
            return Ok(vec![CertificateRevocationListDer::from(data)]);
        }
        return Err(PemError::NoCrl {
            path: path.to_path_buf(),
        });
    }
    let crls: Vec<_> = sections
        .into_iter()
        .filter_map(|(kind, der)| CertificateRevocationListDer::from_pem(kind, der))
        .collect();
    if crls.is_empty() {
        return Err(PemError::NoCrl {
            path: path.to_path_buf(),
        });
    }
    Ok(crls)
}

/// One certificate as PEM text (64-character lines, `\n` endings), the way rcgen writes the
/// certificates it makes.
pub fn certificate_pem(der: &[u8]) -> String {
    let config = ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF);
    ::pem::encode_config(&::pem::Pem::new("CERTIFICATE", der.to_vec()), config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn pem_cert(cn: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.self_signed(&key).unwrap().pem()
    }

    fn file(dir: &tempfile::TempDir, name: &str, contents: &str) -> PathBuf {
        let path = dir.path().join(name);
        fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn a_bundle_is_read_in_file_order_with_text_between_blocks_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (pem_cert("a"), pem_cert("b"));
        let path = file(
            &dir,
            "bundle.pem",
            &format!("subject=a\n{a}\nsubject=b\n{b}"),
        );

        let certs = read_certs(&path).unwrap();

        assert_eq!(certs.len(), 2);
        assert_eq!(certificate_pem(&certs[0]), a);
        assert_eq!(certificate_pem(&certs[1]), b);
    }

    #[test]
    fn a_damaged_block_fails_the_read_naming_the_file_and_the_block() {
        let dir = tempfile::tempdir().unwrap();
        let damaged = pem_cert("b").replacen('\n', "\n!!!!", 2);
        let path = file(&dir, "bundle.pem", &format!("{}{damaged}", pem_cert("a")));

        let err = read_certs(&path).unwrap_err();

        assert!(
            matches!(err, PemError::Malformed { block: 2, .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("bundle.pem") && text.contains("block 2"),
            "{text}"
        );
    }

    #[test]
    fn a_block_without_its_end_line_is_malformed_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cut = pem_cert("a").replace("-----END CERTIFICATE-----", "");
        let path = file(&dir, "cut.pem", &cut);

        let err = read_certs(&path).unwrap_err().to_string();

        assert!(err.contains("no -----END CERTIFICATE----- line"), "{err}");
    }

    #[test]
    fn a_key_file_is_not_a_certificate_and_a_certificate_file_is_not_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let key_path = file(&dir, "key.pem", &key);
        let cert_path = file(&dir, "cert.pem", &pem_cert("a"));

        assert!(matches!(
            read_certs(&key_path),
            Err(PemError::NoCertificate { .. })
        ));
        assert!(matches!(read_key(&cert_path), Err(PemError::NoKey { .. })));
        assert!(matches!(read_key(&key_path), Ok(PrivateKeyDer::Pkcs8(_))));
    }

    #[test]
    fn an_encrypted_key_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            (
                "p8.pem",
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
            ),
            (
                "legacy.pem",
                "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nMIIB\n-----END RSA PRIVATE KEY-----\n",
            ),
        ] {
            let err = read_key(&file(&dir, name, text)).unwrap_err();
            assert!(matches!(err, PemError::EncryptedKey { .. }), "{name}: {err:?}");
        }
    }

    #[test]
    fn crls_are_read_from_pem_or_der_and_anything_else_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let der = [0x30, 0x03, 0x02, 0x01, 0x00];
        let der_path = dir.path().join("crl.der");
        fs::write(&der_path, der).unwrap();
        let pem_path = file(
            &dir,
            "crl.pem",
            "-----BEGIN X509 CRL-----\nMAMCAQA=\n-----END X509 CRL-----\n",
        );

        assert_eq!(read_crls(&der_path).unwrap()[0].as_ref(), &der);
        assert_eq!(read_crls(&pem_path).unwrap()[0].as_ref(), &der);
        let cert_path = file(&dir, "cert.pem", &pem_cert("a"));
        assert!(matches!(read_crls(&cert_path), Err(PemError::NoCrl { .. })));
        let text_path = file(&dir, "notes.txt", "not a CRL\n");
        assert!(matches!(read_crls(&text_path), Err(PemError::NoCrl { .. })));
    }

    #[test]
    fn a_missing_file_says_which_one() {
        let err = read_certs(Path::new("/nonexistent/cert.pem")).unwrap_err();
        assert_eq!(err.path(), Path::new("/nonexistent/cert.pem"));
        assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
    }
}
