//! `check`: what `virt-pki-validate` does for libvirt, plus what the gateway needs (SANs).

use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;

use crate::files::{CA_CERT, CA_KEY, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY};
use crate::keys::{self, PublicHalf};
use crate::pem::{self, describe_sans, format_time, is_ca, name_is_covered, parse_cert};
use crate::PkiError;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Ok,
    /// Works today, needs attention (e.g. expires within the warning window).
    Warning,
    /// libvirt or the gateway will refuse it, or it is unsafe.
    Problem,
}

/// One line of a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
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
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn problems(&self) -> impl Iterator<Item = &Finding> {
        self.at(Level::Problem)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.at(Level::Warning)
    }

    fn at(&self, level: Level) -> impl Iterator<Item = &Finding> {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Server,
    Client,
    /// A leaf certificate of unknown purpose (single-file mode, no EKU).
    Leaf,
}

impl Role {
    fn renew(self) -> &'static str {
        match self {
            Role::Server => "`virtgate pki issue server --force ...`",
            Role::Client => "`virtgate pki issue client --force ...`",
            Role::Leaf => "`virtgate pki issue server|client --force ...`",
        }
    }
}

struct Checker<'a> {
    now: OffsetDateTime,
    options: &'a CheckOptions,
    layouts: Vec<Layout>,
    findings: Vec<Finding>,
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
        self.findings.push(Finding {
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
        let blocks = match pem::blocks(&text) {
            Ok(b) => b,
            Err(e) => {
                self.problem(&about, format!("{e}; restore the file from its source"));
                return;
            }
        };
        let has_key = blocks.iter().any(|b| b.label.ends_with("PRIVATE KEY"));
        let certs: Vec<Vec<u8>> = blocks
            .iter()
            .filter(|b| b.label == "CERTIFICATE")
            .map(|b| b.der.clone())
            .collect();
        if !has_key && certs.is_empty() {
            self.problem(
                &about,
                "holds no PEM certificate or private key; check that this is the right file".into(),
            );
            return;
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        if has_key {
            // A key's certificate sits next to it under libvirt's name for it.
            let cert_name = match about.as_str() {
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
        let Some(first) = certs.first() else {
            if !self.options.hostnames.is_empty() {
                self.problem(
                    "--hostname",
                    format!("{about} holds no certificate to match host names against"),
                );
            }
            return;
        };
        let first_is_ca = parse_cert(first).is_ok_and(|c| is_ca(&c));
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
        let sibling_ca = dir.join(CA_CERT);
        let cas = if sibling_ca.exists() {
            pem::certificate_ders(&fs::read_to_string(&sibling_ca).unwrap_or_default())
                .unwrap_or_default()
        } else {
            self.warning(
                &about,
                format!(
                    "no {CA_CERT} next to it, so its issuer was not verified; check the whole \
                     directory, or put the CA certificate next to it"
                ),
            );
            Vec::new()
        };
        let role = match about.as_str() {
            SERVER_CERT => Role::Server,
            CLIENT_CERT => Role::Client,
            _ => match parse_cert(first).ok().and_then(|c| {
                c.extended_key_usage()
                    .ok()
                    .flatten()
                    .map(|e| (e.value.server_auth, e.value.client_auth))
            }) {
                Some((true, _)) => Role::Server,
                Some((false, true)) => Role::Client,
                _ if !self.options.hostnames.is_empty() => Role::Server,
                _ => Role::Leaf,
            },
        };
        self.leaf_certificate(role, &about, &certs, &cas);
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
            let cert = match parse_cert(&der) {
                Ok(c) => c,
                Err(e) => {
                    self.problem(&about, format!("{e}; replace it with the CA's certificate"));
                    continue;
                }
            };
            if !is_ca(&cert) {
                self.problem(
                    &about,
                    format!(
                        "{} is not a CA certificate (no basicConstraints CA:TRUE), so GnuTLS \
                         will not accept it as an issuer; put the CA's certificate here instead",
                        cert.subject()
                    ),
                );
                continue;
            }
            if let Ok(Some(ku)) = cert.key_usage() {
                if !ku.value.key_cert_sign() {
                    self.problem(
                        &about,
                        "its Key Usage lacks keyCertSign, so nothing it signed verifies; \
                         create a proper CA with `virtgate pki init`"
                            .into(),
                    );
                }
            }
            if cert.subject().as_raw() == cert.issuer().as_raw()
                && cert.verify_signature(None).is_err()
            {
                self.problem(
                    &about,
                    "its self-signature does not verify: the file is damaged; restore it".into(),
                );
            }
            self.ok(&about, format!("CA certificate {}", cert.subject()));
            self.validity(
                &about,
                &cert,
                "create a new CA with `virtgate pki init` and re-issue every certificate it signed",
            );
            usable.push(der);
        }
        usable
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
                    format!(
                        "holds no PEM certificate; re-issue it with {}",
                        role.renew()
                    ),
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
                    role.renew()
                ),
            );
        }
    }

    /// `ders[0]` is the certificate; any further ones are a chain sent along with it.
    fn leaf_certificate(&mut self, role: Role, about: &str, ders: &[Vec<u8>], cas: &[Vec<u8>]) {
        let cert = match parse_cert(&ders[0]) {
            Ok(c) => c,
            Err(e) => {
                self.problem(about, format!("{e}; re-issue it with {}", role.renew()));
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
                cert.subject(),
                cert.issuer()
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
        if is_ca(&cert) {
            self.warning(
                about,
                "is a CA certificate; a host or client should have a certificate of its own \
                 issued by the CA"
                    .into(),
            );
        }
        self.validity(about, &cert, &format!("re-issue it with {}", role.renew()));
        self.key_usage(role, about, &cert);
        self.extended_key_usage(role, about, &cert);
        if role != Role::Client {
            self.subject_alt_names(role, about, &cert);
        }
        self.chain(role, about, &cert, cas);
    }

    fn validity(&mut self, about: &str, cert: &X509Certificate<'_>, renew: &str) {
        let not_before = cert.validity().not_before.to_datetime();
        let not_after = cert.validity().not_after.to_datetime();
        if self.now < not_before {
            self.problem(
                about,
                format!(
                    "not valid before {}: check this machine's clock, or wait until then",
                    format_time(not_before)
                ),
            );
        } else if not_after <= self.now {
            self.problem(
                about,
                format!("expired on {}: {renew}", format_time(not_after)),
            );
        } else {
            let left = not_after - self.now;
            if left < self.options.warn_within {
                self.warning(
                    about,
                    format!(
                        "expires in {} days ({}): {renew} soon",
                        left.whole_days(),
                        format_time(not_after)
                    ),
                );
            } else {
                self.ok(
                    about,
                    format!(
                        "valid until {} ({} days left)",
                        format_time(not_after),
                        left.whole_days()
                    ),
                );
            }
        }
    }

    /// libvirt's `virNetTLSContextCheckCertKeyUsage`, applied to its own certificate and to the
    /// peer's in every session: a critical KU must allow both digitalSignature and
    /// keyEncipherment, a non-critical one only earns a logged warning.
    fn key_usage(&mut self, role: Role, about: &str, cert: &X509Certificate<'_>) {
        match cert.key_usage() {
            Err(e) => self.problem(
                about,
                format!(
                    "its Key Usage extension is malformed ({e}); re-issue it with {}",
                    role.renew()
                ),
            ),
            Ok(None) => self.ok(
                about,
                "no Key Usage extension (libvirt accepts that)".into(),
            ),
            Ok(Some(ku)) => {
                let mut missing = Vec::new();
                if !ku.value.digital_signature() {
                    missing.push("digitalSignature");
                }
                if !ku.value.key_encipherment() {
                    missing.push("keyEncipherment");
                }
                let critical = if ku.critical { ", critical" } else { "" };
                if missing.is_empty() {
                    self.ok(
                        about,
                        format!("Key Usage digitalSignature + keyEncipherment{critical}"),
                    );
                } else if ku.critical {
                    self.problem(
                        about,
                        format!(
                            "Key Usage is critical and lacks {}: libvirt refuses this certificate \
                             in every session (\"usage does not permit ...\"); re-issue it with {}, \
                             which sets both",
                            missing.join(" and "),
                            role.renew()
                        ),
                    );
                } else {
                    self.warning(
                        about,
                        format!(
                            "Key Usage lacks {}; libvirt only logs a warning because it is not \
                             critical, but stricter peers refuse it; re-issue it with {}",
                            missing.join(" and "),
                            role.renew()
                        ),
                    );
                }
            }
        }
    }

    fn extended_key_usage(&mut self, role: Role, about: &str, cert: &X509Certificate<'_>) {
        let (wanted, name) = match role {
            Role::Server => ("serverAuth", "a TLS server"),
            Role::Client => ("clientAuth", "a TLS client"),
            Role::Leaf => return,
        };
        match cert.extended_key_usage() {
            Err(e) => self.problem(
                about,
                format!(
                    "its Extended Key Usage is malformed ({e}); re-issue it with {}",
                    role.renew()
                ),
            ),
            Ok(None) => self.ok(
                about,
                "no Extended Key Usage extension (any purpose; libvirt accepts that)".into(),
            ),
            Ok(Some(eku)) => {
                let has = eku.value.any
                    || match role {
                        Role::Server => eku.value.server_auth,
                        _ => eku.value.client_auth,
                    };
                if has {
                    self.ok(about, format!("Extended Key Usage includes {wanted}"));
                } else {
                    self.problem(
                        about,
                        format!(
                            "Extended Key Usage lacks {wanted}: libvirt and the gateway refuse it \
                             as {name}; re-issue it with {}",
                            role.renew()
                        ),
                    );
                }
            }
        }
    }

    fn subject_alt_names(&mut self, role: Role, about: &str, cert: &X509Certificate<'_>) {
        let (dns, ips) = pem::sans(cert);
        if dns.is_empty() && ips.is_empty() {
            if role == Role::Server {
                self.problem(
                    about,
                    "no subjectAltName DNS names or addresses, only the CN: the gateway (rustls) \
                     and other RFC 6125 clients never match the CN; re-issue it with \
                     `virtgate pki issue server --name HOST --dns NAME --ip ADDR --force`, which \
                     always writes SANs"
                        .into(),
                );
            }
        } else {
            self.ok(about, format!("SANs {}", describe_sans(&dns, &ips)));
        }
        for name in &self.options.hostnames {
            let about = format!("hostname {name}");
            if name_is_covered(&dns, &ips, name) {
                self.ok(&about, "covered by the SANs".into());
            } else {
                let flag = if name
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok()
                {
                    "--ip"
                } else {
                    "--dns"
                };
                self.problem(
                    &about,
                    format!(
                        "not covered by the SANs ({}); clients using it in their URI fail with \
                         \"Failed to verify peer's certificate\"; re-issue with {flag} {name} \
                         (the CN does not count)",
                        describe_sans(&dns, &ips)
                    ),
                );
            }
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
            self.ok(about, format!("signed by {} from {CA_CERT}", ca.subject()));
        } else if named.is_empty() {
            self.problem(
                about,
                format!(
                    "issued by {}, which is not in {CA_CERT}: peers reject it (a libvirt client \
                     even refuses its own certificate before connecting); re-issue it from the \
                     CA in {CA_CERT} with {}, or add its CA to {CA_CERT}",
                    cert.issuer(),
                    role.renew()
                ),
            );
        } else {
            self.problem(
                about,
                format!(
                    "names {} as issuer, but the signature does not verify with that CA's key: \
                     it comes from another CA with the same name (or is damaged); re-issue it \
                     from the CA in {CA_CERT} with {}",
                    cert.issuer(),
                    role.renew()
                ),
            );
        }
    }

    /// Permissions, format, and whether the key belongs to one of `public`.
    fn key(&mut self, path: &Path, cert_about: &str, public: &[PublicHalf]) {
        let about = file_name(path);
        match fs::metadata(path) {
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
        let blocks = pem::blocks(&text).unwrap_or_default();
        let Some(block) = blocks.iter().find(|b| b.label.ends_with("PRIVATE KEY")) else {
            self.problem(
                &about,
                "holds no PEM private key; restore the key that belongs to the certificate".into(),
            );
            return;
        };
        if block.label.contains("ENCRYPTED") {
            self.problem(
                &about,
                "is encrypted, and libvirt cannot ask for a passphrase; store it unencrypted \
                 with mode 0600"
                    .into(),
            );
            return;
        }
        if public.is_empty() {
            return;
        }
        match keys::from_private_key(&block.label, &block.der) {
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
