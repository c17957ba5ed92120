//! Certificates for virtgate and for the libvirt hosts behind it.
//!
//! Owns: the certificate vocabulary every crate uses — the crypto provider (ring), reading PEM
//! files, SPKI pins, subject DNs as text (one grammar for writing and for `--dn`), SAN coverage,
//! the handshake-signature plumbing of custom verifiers, and one judge of single certificates
//! ([`CertInfo`], [`FindingKind`], [`certificate_findings`]) whose findings the broker reports
//! and `check` words; a small certificate authority kept as `cacert.pem` + `cakey.pem`; server
//! and client certificates that libvirt accepts (critical Key Usage digitalSignature +
//! keyEncipherment, EKU serverAuth / clientAuth, SANs that always include the CN) written in
//! libvirt's file layouts; the two CA roles kept apart (a users' CA that signs people's
//! certificates, a backend CA that signs only the gateway's backend identity and is the one CA
//! hosts trust), marked in each CA's subject; `check`, which tells whether a directory or PEM
//! file will work with libvirt and the gateway and whether the roles are mixed; throwaway
//! in-memory client identities for the broker's bypass check; and the development PKI
//! `virtgate up` creates on first start.
//! Must not: touch the network, start or reconfigure services, print or log (callers do),
//! write a private key with any mode but 0600, replace an existing CA, hand-roll crypto or
//! encodings (rustls, rustls-pki-types, rcgen and x509-parser do), or use OpenSSL (everything
//! is on ring).
#![forbid(unsafe_code)]

mod ca;
mod check;
mod dev;
mod dn;
mod files;
mod identity;
mod keys;
mod pem;
mod roles;
mod rules;

use std::path::{Path, PathBuf};

pub use ca::{
    issue_client, issue_server, read_trust_files, Ca, CaOptions, ClientBundle, ClientRequest,
    InMemoryIdentity, Issued, Output, ServerBundle, ServerRequest, CA_DAYS, LEAF_DAYS, MAX_DAYS,
};
pub use check::{check, CheckFinding, CheckOptions, Layout, Level, Report};
pub use dev::{
    bootstrap_dev, DevPki, ADMIN_DN, BACKEND_CA_DIR, BACKEND_DN, DEV_DAYS, DEV_PKI_DIR,
    USERS_CA_DIR,
};
pub use dn::{common_name_part, dn_string, parse_dn, SUPPORTED_ATTRIBUTES};
pub use files::{
    write_private_file, CaFiles, ClientFiles, ServerFiles, CA_CERT, CA_KEY, CERT_MODE, CLIENT_CERT,
    CLIENT_KEY, DIR_MODE, KEY_MODE, SERVER_CERT, SERVER_KEY,
};
pub use identity::{
    certificate_pem, name_is_covered, provider, read_certs, read_crls, read_key, spki_pin,
    subject_dn, supported_verify_schemes, verify_tls12_signature, verify_tls13_signature,
    InvalidCertificate, PemError, Pin, PinError, ServerKeyVerifier,
};
pub use pem::format_time;
pub use roles::{
    is_backend_dn, issuer_fits, throwaway_client, CaRole, Issuing, BYPASS_PROBE_DN,
    DEV_ORGANIZATION,
};
pub use rules::{
    certificate_findings, libvirt_key_usage_missing, name_finding, parse_certificate, sha256_hex,
    CertError, CertInfo, Finding, FindingKind, Role, Severity, Windows,
};

/// Internals whose properties the fuzz targets in `pki/fuzz` check (`fuzzing` feature). Not an
/// API: they may change with any commit.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::dn::{read_dn, Attribute, AttributeValue};
}

/// The certificate libraries this crate is built on, re-exported so callers (and the
/// integration tests of the `virtgate` binary) use exactly these versions.
pub use rcgen;
pub use rustls;
pub use x509_parser;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(
        "a CA already exists in {} ({file} is there); issue certificates with it (--ca {}), \
         or pick another directory for a new CA",
        dir.display(), dir.display()
    )]
    CaExists { dir: PathBuf, file: &'static str },
    #[error(
        "no CA in {}: {file} is missing; create one with `virtgate pki init --out {}`, or point \
         --ca at the directory that holds cacert.pem and cakey.pem",
        dir.display(), dir.display()
    )]
    NoCa { dir: PathBuf, file: &'static str },
    #[error(
        "the CA in {} expired on {not_after}; create a new CA with `virtgate pki init --out \
         NEW_DIR` and re-issue every certificate from it",
        dir.display()
    )]
    CaExpired { dir: PathBuf, not_after: String },
    #[error(
        "{} already exists; pass --force to replace it (e.g. to renew), or choose another \
         output directory",
        path.display()
    )]
    Exists { path: PathBuf },
    #[error(
        "{} exists and does not trust this CA; pass --force to replace it, or add the CA's \
         certificate to it yourself if it is a bundle you want to keep",
        path.display()
    )]
    ForeignCaFile { path: PathBuf },
    #[error("cannot {action} {}: {source}; check the path and its permissions", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error(
        "invalid subject DN {dn:?}: {reason}; write it like 'C=GB,O=Example,CN=alice' \
         (attributes C, ST, L, O, OU, CN)"
    )]
    InvalidDn { dn: String, reason: String },
    #[error(
        "invalid DNS name {name:?}: {reason}; give a host name like gw.example.com \
         (addresses go to --ip)"
    )]
    InvalidName { name: String, reason: String },
    #[error(
        "cannot reuse the key in {}: {reason}; issue without --reuse-key for a new key (hosts \
         trusted by pin then need `virtgate hosts approve` again)",
        path.display()
    )]
    NoKeyToReuse { path: PathBuf, reason: String },
    #[error("a validity of {days} days is out of range; choose between 1 and {MAX_DAYS} days")]
    InvalidDays { days: u32 },
    #[error("extra CA certificates: {reason}; pass PEM files that hold CA certificates")]
    BadTrust { reason: String },
    #[error(
        "cannot create or sign the certificate: {0}; the CA key must be ECDSA P-256/P-384 or \
         RSA in unencrypted PKCS#8"
    )]
    Sign(#[source] rcgen::Error),
    #[error(
        "{} does not exist; pass a libvirt certificate directory (server layout or client \
         pkipath), a CA directory or a PEM file",
        path.display()
    )]
    NoSuchTarget { path: PathBuf },
    #[error("incomplete development PKI in {}: {reason}", dir.display())]
    IncompleteDevPki { dir: PathBuf, reason: String },
    #[error("wrong CA for this certificate: {reason}")]
    WrongCaRole { reason: String },
}

impl PkiError {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        PkiError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}
