//! `check`: what `virt-pki-validate` does for libvirt, plus what the gateway needs (SANs).
//!
//! What is wrong with a single certificate is decided by the shared judge
//! ([`certificate_findings`]) and only worded here, for a person fixing files; this module adds
//! what is not about one certificate: the file layouts, modes, keys and the chain to the CA.

use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;

use crate::dn::dn_string;
use crate::files::{CA_CERT, CA_KEY, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY};
use crate::identity::name_is_covered;
use crate::keys::{self, PublicHalf};
use crate::pem::{self, describe_sans, format_unix, is_ca, parse_cert};
use crate::rules::{
    certificate_findings, libvirt_key_usage_missing, parse_certificate, CertInfo, Finding,
    FindingKind, Role, Severity, Windows,
};
use crate::PkiError;

mod roles;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Ok,
    /// Works today, needs attention (e.g. expires within the warning window).
    Warning,
    /// libvirt or the gateway will refuse it, or it is unsafe.
    Problem,
}

impl From<Severity> for Level {
    fn from(severity: Severity) -> Level {
        match severity {
            Severity::Warning => Level::Warning,
            Severity::Problem => Level::Problem,
        }
    }
}

/// One line of a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFinding {
    pub level: Level,
    /// What it is about: a file name, or `hostname NAME`.
    pub about: String,
    /// What was found and, unless it is fine, what to do about it.
    pub message: String,
}

/// What kind of files were checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `servercert.pem`, `serverkey.pem`, `cacert.pem` (libvirtd).
    Server,
    /// `clientcert.pem`, `clientkey.pem`, `cacert.pem` (a `?pkipath=DIR` directory).
    Client,
    /// `cacert.pem` and possibly `cakey.pem`.
    Ca,
    /// One PEM file.
    File,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Server => "libvirt server files",
            Layout::Client => "libvirt client pkipath",
            Layout::Ca => "certificate authority",
            Layout::File => "PEM file",
        })
    }
}

/// The result of [`check`].
#[derive(Debug, Clone)]
pub struct Report {
    pub target: PathBuf,
    pub layouts: Vec<Layout>,
    pub findings: Vec<CheckFinding>,
}

impl Report {
    pub fn problems(&self) -> impl Iterator<Item = &CheckFinding> {
        self.at(Level::Problem)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &CheckFinding> {
        self.at(Level::Warning)
    }

    fn at(&self, level: Level) -> impl Iterator<Item = &CheckFinding> {
        self.findings.iter().filter(move |f| f.level == level)
    }

    /// True when nothing would stop libvirt or the gateway from using these files.
    pub fn passed(&self) -> bool {
        self.problems().next().is_none()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let layouts: Vec<String> = self.layouts.iter().map(Layout::to_string).collect();
        let kind = if layouts.is_empty() {
            "nothing recognised".to_string()
        } else {
            layouts.join(" + ")
        };
        writeln!(f, "{} ({kind})", self.target.display())?;
        for finding in &self.findings {
            let tag = match finding.level {
                Level::Ok => "ok",
                Level::Warning => "warning",
                Level::Problem => "PROBLEM",
            };
            writeln!(f, "  {tag:<8} {}: {}", finding.about, finding.message)?;
        }
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        write!(
            f,
            "{}, {}",
            plural(self.problems().count(), "problem"),
            plural(self.warnings().count(), "warning")
        )
    }
}

/// Options for [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOptions {
    /// Names and addresses clients will put into their URIs; each must be covered by the server
    /// certificate's SANs.
    pub hostnames: Vec<String>,
    /// Certificates expiring sooner than this are a warning.
    pub warn_within: Duration,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            hostnames: Vec::new(),
            warn_within: Duration::days(30),
        }
    }
}

/// Checks a libvirt certificate directory (server layout, client `pkipath` layout, both, or
/// a CA directory) or a single PEM file. Fails only when `path` cannot be read at all; every
/// finding about the files is in the report.
pub fn check(path: &Path, options: &CheckOptions) -> Result<Report, PkiError> {
    let meta = fs::metadata(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => PkiError::NoSuchTarget {
            path: path.to_path_buf(),
        },
        _ => PkiError::io("read", path, source),
    })?;
    let mut checker = Checker {
        now: OffsetDateTime::now_utc(),
        options,
        layouts: Vec::new(),
        findings: Vec::new(),
    };
    if meta.is_dir() {
        checker.directory(path);
    } else {
        checker.file(path);
    }
    Ok(Report {
        target: path.to_path_buf(),
        layouts: checker.layouts,
        findings: checker.findings,
    })
}

/// The command that makes a replacement for a certificate of `role`.
fn renew(role: Role) -> &'static str {
    match role {
        Role::Server => "`virtgate pki issue server --force ...`",
        Role::Client => "`virtgate pki issue client --force ...`",
        Role::Any => "`virtgate pki issue server|client --force ...`",
        Role::Authority => "`virtgate pki init` (a new CA)",
    }
}

/// What a CA certificate's fix is: a new CA, and everything it signed again.
const RENEW_CA: &str =
    "create a new CA with `virtgate pki init` and re-issue every certificate it signed";

fn has(findings: &[Finding], kind: FindingKind) -> bool {
    findings.iter().any(|f| f.kind == kind)
}

struct Checker<'a> {
    now: OffsetDateTime,
    options: &'a CheckOptions,
    layouts: Vec<Layout>,
    findings: Vec<CheckFinding>,
}

/// `servercert.pem` → `serverkey.pem`, or the `private/` subdirectory of the system layout
/// (`/etc/pki/libvirt/private/serverkey.pem`).
fn find_key(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join("private").join(name)]
        .into_iter()
        .find(|p| p.exists())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

impl Checker<'_> {
    fn push(&mut self, level: Level, about: &str, message: String) {
        self.findings.push(CheckFinding {
            level,
            about: about.to_string(),
            message,
        });
    }

    fn ok(&mut self, about: &str, message: String) {
        self.push(Level::Ok, about, message);
    }

    fn warning(&mut self, about: &str, message: String) {
        self.push(Level::Warning, about, message);
    }

    fn problem(&mut self, about: &str, message: String) {
        self.push(Level::Problem, about, message);
    }

    /// A line for a finding of the shared judge, at the level its kind has.
    fn judged(&mut self, kind: FindingKind, about: &str, message: String) {
        self.push(kind.severity().into(), about, message);
    }

    /// The shared judge's findings on one certificate. `check` has one warning window, so
    /// `expiring_soon` and `expiring_critical` read the same here.
    fn judge(&self, info: &CertInfo, role: Role) -> Vec<Finding> {
        let windows = Windows {
            warning: self.options.warn_within.try_into().unwrap_or_default(),
            critical: std::time::Duration::ZERO,
        };
        certificate_findings(info, self.now.unix_timestamp(), windows, role)
    }

    fn directory(&mut self, dir: &Path) {
        let server_key = find_key(dir, SERVER_KEY);
        let client_key = find_key(dir, CLIENT_KEY);
        let server = dir.join(SERVER_CERT).exists() || server_key.is_some();
        let client = dir.join(CLIENT_CERT).exists() || client_key.is_some();
        let ca_key = dir.join(CA_KEY);
        let has_ca_key = ca_key.exists();
        let local_ca = dir.join(CA_CERT);
        if !server && !client && !has_ca_key && !local_ca.exists() {
            self.problem(
                &dir.display().to_string(),
                format!(
                    "no libvirt certificate files here (looked for {SERVER_CERT}, {SERVER_KEY}, \
                     {CLIENT_CERT}, {CLIENT_KEY}, {CA_CERT}, {CA_KEY}); point check at a server \
                     directory, a client pkipath directory, a CA directory or a PEM file"
                ),
            );
            return;
        }
        if server {
            self.layouts.push(Layout::Server);
        }
        if client {
            self.layouts.push(Layout::Client);
        }
        if !server && !client {
            self.layouts.push(Layout::Ca);
        }

        let system = !local_ca.exists();
        // The system layout keeps the CA apart: /etc/pki/libvirt next to /etc/pki/CA.
        let system_ca = dir.parent().map(|p| p.join("CA").join(CA_CERT));
        let ca_path = if local_ca.exists() {
            Some(local_ca)
        } else {
            let system = system_ca.filter(|p| (server || client) && p.exists());
            if let Some(p) = &system {
                self.ok(
                    CA_CERT,
                    format!(
                        "not in this directory; using {} (libvirt's system layout)",
                        p.display()
                    ),
                );
            }
            system
        };
        let cas = match &ca_path {
            Some(path) => self.ca_bundle(path),
            None => {
                let message = if server || client {
                    let who = if server {
                        "libvirtd"
                    } else {
                        "the libvirt client"
                    };
                    format!(
                        "missing: {who} needs the CA certificate to verify its peer (and \
                         clients their own certificate); copy the CA's {CA_CERT} into {}",
                        dir.display()
                    )
                } else {
                    format!(
                        "missing: {CA_KEY} is here without its certificate, so nothing can be \
                         issued or verified; restore {CA_CERT} from a copy"
                    )
                };
                self.problem(CA_CERT, message);
                Vec::new()
            }
        };

        if has_ca_key {
            let ca_public: Vec<PublicHalf> = cas
                .iter()
                .filter_map(|der| {
                    parse_cert(der)
                        .ok()
                        .and_then(|c| keys::from_certificate(&c))
                })
                .collect();
            self.key(&ca_key, CA_CERT, &ca_public);
        }
        if server {
            let key = server_key.unwrap_or_else(|| dir.join(SERVER_KEY));
            self.leaf_pair(Role::Server, &dir.join(SERVER_CERT), &key, &cas);
        }
        if client {
            let key = client_key.unwrap_or_else(|| dir.join(CLIENT_KEY));
            self.leaf_pair(Role::Client, &dir.join(CLIENT_CERT), &key, &cas);
        }
        self.roles(dir, (server, client, system), &cas);
        if !server && !self.options.hostnames.is_empty() {
            self.problem(
                "--hostname",
                format!(
                    "{} holds no server certificate to match host names against; point check \
                     at the directory with {SERVER_CERT}",
                    dir.display()
                ),
            );
        }
    }

    fn file(&mut self, path: &Path) {
        self.layouts.push(Layout::File);
        let about = file_name(path);
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                self.problem(
                    &about,
                    format!("cannot read it ({e}); check its permissions"),
                );
                return;
            }
        };
        let encrypted_key = pem::has_encrypted_key(&text);
        let blocks = match pem::blocks(&text) {
            Ok(b) => b,
            // A legacy encrypted key does not decode; `key` says what is wrong with it.
            Err(_) if encrypted_key => Vec::new(),
            Err(e) => {
                self.problem(&about, format!("{e}; restore the file from its source"));
                return;
            }
        };
        let has_key = encrypted_key || blocks.iter().any(|b| b.label.ends_with("PRIVATE KEY"));
        let certs: Vec<Vec<u8>> = blocks
            .into_iter()
            .filter(|b| b.label == "CERTIFICATE")
            .map(|b| b.der)
            .collect();
        if !has_key && certs.is_empty() {
            self.problem(
                &about,
                "holds no PEM certificate or private key; check that this is the right file".into(),
            );
            return;
        }
        if has_key {
            self.key_file(path, &about);
        }
        if certs.is_empty() {
            if !self.options.hostnames.is_empty() {
                self.problem(
                    "--hostname",
                    format!("{about} holds no certificate to match host names against"),
                );
            }
            return;
        }
        self.certificate_file(path, &about, &certs);
    }

    /// A key file on its own: its certificate sits next to it under libvirt's name for it.
    fn key_file(&mut self, path: &Path, about: &str) {
        let dir = path.parent().unwrap_or(Path::new("."));
        let cert_name = match about {
            SERVER_KEY => Some(SERVER_CERT),
            CLIENT_KEY => Some(CLIENT_CERT),
            CA_KEY => Some(CA_CERT),
            _ => None,
        };
        let public: Vec<PublicHalf> = cert_name
            .and_then(|n| fs::read_to_string(dir.join(n)).ok())
            .and_then(|t| pem::certificate_ders(&t).ok())
            .and_then(|ders| ders.first().cloned())
            .and_then(|der| {
                parse_cert(&der)
                    .ok()
                    .and_then(|c| keys::from_certificate(&c))
            })
            .into_iter()
            .collect();
        self.key(path, cert_name.unwrap_or("its certificate"), &public);
    }

    /// A certificate file on its own: a CA (bundle), or a leaf checked against the
    /// `cacert.pem` next to it.
    fn certificate_file(&mut self, path: &Path, about: &str, certs: &[Vec<u8>]) {
        let first_is_ca = parse_cert(&certs[0]).is_ok_and(|c| is_ca(&c));
        if first_is_ca || about == CA_CERT {
            self.ca_bundle(path);
            if !self.options.hostnames.is_empty() {
                self.problem(
                    "--hostname",
                    format!("{about} is a CA certificate; host names are matched against a server certificate"),
                );
            }
            return;
        }
        let sibling_ca = path.parent().unwrap_or(Path::new(".")).join(CA_CERT);
        let cas = if sibling_ca.exists() {
            pem::certificate_ders(&fs::read_to_string(&sibling_ca).unwrap_or_default())
                .unwrap_or_default()
        } else {
            self.warning(
                about,
                format!(
                    "no {CA_CERT} next to it, so its issuer was not verified; check the whole \
                     directory, or put the CA certificate next to it"
                ),
            );
            Vec::new()
        };
        let role = self.role_of(about, &certs[0]);
        self.leaf_certificate(role, about, certs, &cas);
    }

    /// A leaf's role: from libvirt's file name, else from its EKU (or `--hostname`).
    fn role_of(&self, about: &str, der: &[u8]) -> Role {
        match about {
            SERVER_CERT => return Role::Server,
            CLIENT_CERT => return Role::Client,
            _ => {}
        }
        let purposes = parse_cert(der).ok().and_then(|c| {
            c.extended_key_usage()
                .ok()
                .flatten()
                .map(|e| (e.value.server_auth, e.value.client_auth))
        });
        match purposes {
            Some((true, _)) => Role::Server,
            Some((false, true)) => Role::Client,
            _ if !self.options.hostnames.is_empty() => Role::Server,
            _ => Role::Any,
        }
    }

    /// Checks `cacert.pem` (one CA or a bundle) and returns the DER of each usable certificate.
    fn ca_bundle(&mut self, path: &Path) -> Vec<Vec<u8>> {
        let about = file_name(path);
        let ders = match fs::read_to_string(path)
            .map_err(|e| format!("cannot read it ({e}); check its permissions"))
            .and_then(|t| pem::certificate_ders(&t))
        {
            Ok(d) if d.is_empty() => {
                self.problem(
                    &about,
                    "holds no PEM certificate; put the CA's certificate into it".into(),
                );
                return Vec::new();
            }
            Ok(d) => d,
            Err(e) => {
                self.problem(&about, e);
                return Vec::new();
            }
        };
        let many = ders.len() > 1;
        let mut usable = Vec::new();
        for (i, der) in ders.into_iter().enumerate() {
            let about = if many {
                format!("{about} #{}", i + 1)
            } else {
                about.clone()
            };
            if self.ca_certificate(&about, &der) {
                usable.push(der);
            }
        }
        usable
    }

    /// One certificate of a CA file; whether it can act as an issuer.
    fn ca_certificate(&mut self, about: &str, der: &[u8]) -> bool {
        let (cert, info) = match parse_cert(der).and_then(|cert| {
            let info = parse_certificate(der, 0).map_err(|e| e.reason)?;
            Ok((cert, info))
        }) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.problem(about, format!("{e}; replace it with the CA's certificate"));
                return false;
            }
        };
        if !info.is_ca {
            self.problem(
                about,
                format!(
                    "{} is not a CA certificate (no basicConstraints CA:TRUE), so GnuTLS \
                     will not accept it as an issuer; put the CA's certificate here instead",
                    info.subject
                ),
            );
            return false;
        }
        let findings = self.judge(&info, Role::Authority);
        if has(&findings, FindingKind::LibvirtKeyUsage) {
            self.judged(
                FindingKind::LibvirtKeyUsage,
                about,
                "its Key Usage lacks keyCertSign, so nothing it signed verifies; create a proper \
                 CA with `virtgate pki init`"
                    .into(),
            );
        }
        if info.self_signed && cert.verify_signature(None).is_err() {
            self.problem(
                about,
                "its self-signature does not verify: the file is damaged; restore it".into(),
            );
        }
        self.ok(about, format!("CA certificate {}", info.subject));
        self.validity(about, &info, &findings, RENEW_CA);
        self.strength(about, &info, &findings, RENEW_CA);
        true
    }

    fn leaf_pair(&mut self, role: Role, cert_path: &Path, key_path: &Path, cas: &[Vec<u8>]) {
        let about = file_name(cert_path);
        let mut public = Vec::new();
        if !cert_path.exists() {
            let fix = match role {
                Role::Server => format!(
                    "libvirtd's cert_file; issue one with `virtgate pki issue server --name HOST \
                     --out {}`",
                    cert_path.parent().unwrap_or(Path::new(".")).display()
                ),
                _ => format!(
                    "libvirt clients look for exactly this name in the pkipath directory; issue \
                     one with `virtgate pki issue client --dn 'O=...,CN=...' --out {}`",
                    cert_path.parent().unwrap_or(Path::new(".")).display()
                ),
            };
            self.problem(&about, format!("missing: {fix}"));
        } else {
            match fs::read_to_string(cert_path)
                .map_err(|e| format!("cannot read it ({e}); check its permissions"))
                .and_then(|t| pem::certificate_ders(&t))
            {
                Ok(ders) if ders.is_empty() => self.problem(
                    &about,
                    format!("holds no PEM certificate; re-issue it with {}", renew(role)),
                ),
                Ok(ders) => {
                    if let Some(p) = parse_cert(&ders[0])
                        .ok()
                        .and_then(|c| keys::from_certificate(&c))
                    {
                        public.push(p);
                    }
                    self.leaf_certificate(role, &about, &ders, cas);
                }
                Err(e) => self.problem(&about, e),
            }
        }
        if key_path.exists() {
            self.key(key_path, &about, &public);
        } else {
            self.problem(
                &file_name(key_path),
                format!(
                    "missing: the private key of {about} belongs here (mode 0600); without it \
                     the certificate cannot be used, re-issue both with {}",
                    renew(role)
                ),
            );
        }
    }

    /// `ders[0]` is the certificate; any further ones are a chain sent along with it.
    fn leaf_certificate(&mut self, role: Role, about: &str, ders: &[Vec<u8>], cas: &[Vec<u8>]) {
        let renew_it = format!("re-issue it with {}", renew(role));
        let (cert, info) = match parse_cert(&ders[0]).and_then(|cert| {
            let info = parse_certificate(&ders[0], 0).map_err(|e| e.reason)?;
            Ok((cert, info))
        }) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.problem(about, format!("{e}; {renew_it}"));
                return;
            }
        };
        let subject_note = match role {
            Role::Client => " (what libvirtd's tls_allowed_dn_list matches)",
            _ => "",
        };
        self.ok(
            about,
            format!(
                "subject {}{subject_note}; issuer {}",
                info.subject, info.issuer
            ),
        );
        if ders.len() > 1 {
            self.ok(
                about,
                format!(
                    "holds {} certificates; the first is checked, the rest are its chain",
                    ders.len()
                ),
            );
        }
        if info.is_ca {
            self.warning(
                about,
                "is a CA certificate; a host or client should have a certificate of its own \
                 issued by the CA"
                    .into(),
            );
        }
        let findings = self.judge(&info, role);
        self.validity(about, &info, &findings, &renew_it);
        self.strength(about, &info, &findings, &renew_it);
        self.key_usage(role, about, &cert, &info, &findings);
        self.extended_key_usage(role, about, &cert, &findings);
        if role != Role::Client {
            self.subject_alt_names(about, &info, &findings);
        }
        self.chain(role, about, &cert, cas);
    }

    fn validity(&mut self, about: &str, info: &CertInfo, findings: &[Finding], renew_it: &str) {
        let not_after = format_unix(info.not_after);
        // Rounded, not truncated: a certificate issued for 10 days a moment ago has 10 days
        // left, as its operator counts them, not 9 days and 23:59 hours.
        let days_left = (info.not_after - self.now.unix_timestamp() + 43_200).div_euclid(86_400);
        if has(findings, FindingKind::NotYetValid) {
            self.judged(
                FindingKind::NotYetValid,
                about,
                format!(
                    "not valid before {}: check this machine's clock, or wait until then",
                    format_unix(info.not_before)
                ),
            );
        } else if has(findings, FindingKind::Expired) {
            self.judged(
                FindingKind::Expired,
                about,
                format!("expired on {not_after}: {renew_it}"),
            );
        } else if let Some(expiring) = findings.iter().find(|f| {
            matches!(
                f.kind,
                FindingKind::ExpiringSoon | FindingKind::ExpiringCritical
            )
        }) {
            self.judged(
                expiring.kind,
                about,
                format!("expires in {days_left} days ({not_after}): {renew_it} soon"),
            );
        } else {
            self.ok(
                about,
                format!("valid until {not_after} ({days_left} days left)"),
            );
        }
    }

    /// Key size, signature algorithm, and a leaf that signed itself.
    fn strength(&mut self, about: &str, info: &CertInfo, findings: &[Finding], renew_it: &str) {
        let mut weak = false;
        for finding in findings {
            let message = match finding.kind {
                FindingKind::WeakKey => format!(
                    "{}: the gateway (rustls) and current GnuTLS refuse keys that weak; {renew_it}",
                    finding.detail
                ),
                FindingKind::WeakSignature => format!(
                    "{}, which the gateway (rustls) and current GnuTLS refuse; {renew_it}",
                    finding.detail
                ),
                FindingKind::SelfSigned => format!(
                    "{}: peers accept it only if it is in their own {CA_CERT} or pinned; \
                     {renew_it} from a CA",
                    finding.detail
                ),
                _ => continue,
            };
            weak |= finding.kind != FindingKind::SelfSigned;
            self.judged(finding.kind, about, message);
        }
        if !weak {
            self.ok(
                about,
                format!(
                    "{} key ({} bits, pin sha256:{}), signed with {}",
                    info.key_type, info.key_bits, info.spki_sha256, info.signature_algorithm
                ),
            );
        }
    }

    /// libvirt's `virNetTLSCertCheckKeyUsage`, applied to its own certificate and to the
    /// peer's in every session: a critical KU must allow both digitalSignature and
    /// keyEncipherment, a non-critical one only earns a logged warning.
    fn key_usage(
        &mut self,
        role: Role,
        about: &str,
        cert: &X509Certificate<'_>,
        info: &CertInfo,
        findings: &[Finding],
    ) {
        let ku = match cert.key_usage() {
            Err(e) => {
                let message = format!(
                    "its Key Usage extension is malformed ({e}); re-issue it with {}",
                    renew(role)
                );
                return self.problem(about, message);
            }
            Ok(None) => {
                let message = "no Key Usage extension (libvirt accepts that)".to_string();
                return self.ok(about, message);
            }
            Ok(Some(ku)) => ku,
        };
        let missing = libvirt_key_usage_missing(info, role).join(" and ");
        if has(findings, FindingKind::LibvirtKeyUsage) {
            self.judged(
                FindingKind::LibvirtKeyUsage,
                about,
                format!(
                    "Key Usage is critical and lacks {missing}: libvirt refuses this certificate \
                     in every session (\"usage does not permit ...\"); re-issue it with {}, \
                     which sets both",
                    renew(role)
                ),
            );
        } else if missing.is_empty() {
            let critical = if ku.critical { ", critical" } else { "" };
            self.ok(
                about,
                format!("Key Usage digitalSignature + keyEncipherment{critical}"),
            );
        } else {
            self.warning(
                about,
                format!(
                    "Key Usage lacks {missing}; libvirt only logs a warning because it is not \
                     critical, but stricter peers refuse it; re-issue it with {}",
                    renew(role)
                ),
            );
        }
    }

    fn extended_key_usage(
        &mut self,
        role: Role,
        about: &str,
        cert: &X509Certificate<'_>,
        findings: &[Finding],
    ) {
        let (wanted, name, kind) = match role {
            Role::Server => ("serverAuth", "a TLS server", FindingKind::NotServerAuth),
            Role::Client => ("clientAuth", "a TLS client", FindingKind::NotClientAuth),
            Role::Any | Role::Authority => return,
        };
        match cert.extended_key_usage() {
            Err(e) => self.problem(
                about,
                format!(
                    "its Extended Key Usage is malformed ({e}); re-issue it with {}",
                    renew(role)
                ),
            ),
            Ok(None) => self.ok(
                about,
                "no Extended Key Usage extension (any purpose; libvirt accepts that)".into(),
            ),
            Ok(Some(_)) if has(findings, kind) => self.judged(
                kind,
                about,
                format!(
                    "Extended Key Usage lacks {wanted}: libvirt and the gateway refuse it as \
                     {name}; re-issue it with {}",
                    renew(role)
                ),
            ),
            Ok(Some(_)) => self.ok(about, format!("Extended Key Usage includes {wanted}")),
        }
    }

    fn subject_alt_names(&mut self, about: &str, info: &CertInfo, findings: &[Finding]) {
        let sans = describe_sans(&info.dns_names, &info.ip_addresses);
        if has(findings, FindingKind::CnOnly) {
            self.judged(
                FindingKind::CnOnly,
                about,
                "no subjectAltName DNS names or addresses, only the CN: the gateway (rustls) \
                 and other RFC 6125 clients never match the CN; re-issue it with \
                 `virtgate pki issue server --name HOST --dns NAME --ip ADDR --force`, which \
                 always writes SANs"
                    .into(),
            );
        } else if !info.dns_names.is_empty() || !info.ip_addresses.is_empty() {
            self.ok(about, format!("SANs {sans}"));
        }
        for name in &self.options.hostnames {
            let about = format!("hostname {name}");
            if name_is_covered(info, name) {
                self.ok(&about, "covered by the SANs".into());
                continue;
            }
            let is_address = name
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok();
            let flag = if is_address { "--ip" } else { "--dns" };
            self.problem(
                &about,
                format!(
                    "not covered by the SANs ({sans}); clients using it in their URI fail with \
                     \"Failed to verify peer's certificate\"; re-issue with {flag} {name} \
                     (the CN does not count)"
                ),
            );
        }
    }

    /// GnuTLS finds the issuer in `cacert.pem` by name and then checks the signature; both are
    /// done here, so a certificate from another CA with the same name is caught too.
    fn chain(&mut self, role: Role, about: &str, cert: &X509Certificate<'_>, cas: &[Vec<u8>]) {
        if cas.is_empty() {
            return;
        }
        let parsed: Vec<X509Certificate<'_>> =
            cas.iter().filter_map(|der| parse_cert(der).ok()).collect();
        let named: Vec<&X509Certificate<'_>> = parsed
            .iter()
            .filter(|ca| ca.subject().as_raw() == cert.issuer().as_raw())
            .collect();
        if let Some(ca) = named
            .iter()
            .find(|ca| cert.verify_signature(Some(ca.public_key())).is_ok())
        {
            self.ok(
                about,
                format!("signed by {} from {CA_CERT}", dn_string(ca.subject())),
            );
        } else if named.is_empty() {
            self.problem(
                about,
                format!(
                    "issued by {}, which is not in {CA_CERT}: peers reject it (a libvirt client \
                     even refuses its own certificate before connecting); re-issue it from the \
                     CA in {CA_CERT} with {}, or add its CA to {CA_CERT}",
                    dn_string(cert.issuer()),
                    renew(role)
                ),
            );
        } else {
            self.problem(
                about,
                format!(
                    "names {} as issuer, but the signature does not verify with that CA's key: \
                     it comes from another CA with the same name (or is damaged); re-issue it \
                     from the CA in {CA_CERT} with {}",
                    dn_string(cert.issuer()),
                    renew(role)
                ),
            );
        }
    }

    /// Permissions, format, and whether the key belongs to one of `public`.
    fn key(&mut self, path: &Path, cert_about: &str, public: &[PublicHalf]) {
        let about = file_name(path);
        match fs::metadata(path) {
            // A directory's mode and "cannot read it" would both send the operator the wrong
            // way: the file is simply not there.
            Ok(meta) if meta.is_dir() => {
                self.problem(
                    &about,
                    format!(
                        "is a directory, not a key file; put the PEM private key at {} (mode \
                         0600), e.g. the serverkey.pem or clientkey.pem `virtgate pki issue` wrote",
                        path.display()
                    ),
                );
                return;
            }
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    self.problem(
                        &about,
                        format!(
                            "mode {mode:04o} lets group or others read it, and whoever reads it \
                             can impersonate its owner; run `chmod 600 {}`",
                            path.display()
                        ),
                    );
                } else {
                    self.ok(&about, format!("mode {mode:04o}"));
                }
            }
            Err(e) => {
                self.problem(&about, format!("cannot stat it ({e}); check the path"));
                return;
            }
        }
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                self.problem(
                    &about,
                    format!("cannot read it ({e}); run check as the user libvirt runs as"),
                );
                return;
            }
        };
        if pem::has_encrypted_key(&text) {
            self.problem(
                &about,
                "is encrypted, and libvirt cannot ask for a passphrase; store it unencrypted \
                 with mode 0600"
                    .into(),
            );
            return;
        }
        let blocks = pem::blocks(&text).unwrap_or_default();
        let Some(block) = blocks.iter().find(|b| b.label.ends_with("PRIVATE KEY")) else {
            self.problem(
                &about,
                "holds no PEM private key; restore the key that belongs to the certificate".into(),
            );
            return;
        };
        if public.is_empty() {
            return;
        }
        match keys::from_private_key(block.label, &block.der) {
            Some(half) if public.contains(&half) => {
                self.ok(&about, format!("belongs to {cert_about}"));
            }
            Some(_) => self.problem(
                &about,
                format!(
                    "does not belong to {cert_about} (different public key): the files were \
                     mixed up or only one was replaced; restore the matching pair or re-issue both"
                ),
            ),
            None => self.warning(
                &about,
                format!(
                    "its format ({}) does not carry the public key, so whether it belongs to \
                     {cert_about} was not checked",
                    block.label
                ),
            ),
        }
    }
}
