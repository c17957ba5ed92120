//! The certificate authority and the certificates it issues.

use std::fs;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

use crate::dn::parse_dn;
use crate::files::{
    ensure_dir, read_to_string, write_file, CaFiles, ClientFiles, Existing, ServerFiles, CA_CERT,
    CA_KEY, CERT_MODE, KEY_MODE,
};
use crate::identity::certificate_pem;
use crate::pem::{certificate_ders, is_ca, parse_cert};
use crate::roles::{issuer_fits, CaRole, Issuing};
use crate::rules::parse_certificate;
use crate::PkiError;

/// Default validity of a new CA.
pub const CA_DAYS: u32 = 3650;
/// Default validity of a server or client certificate.
pub const LEAF_DAYS: u32 = 365;
/// Upper bound for any validity, to catch typos like `--days 36500000`.
pub const MAX_DAYS: u32 = 36500;

/// Issued certificates start this long before "now", so a peer whose clock is a little behind
/// does not see a certificate that is not yet valid.
const BACKDATE: Duration = Duration::hours(1);

fn validate_days(days: u32) -> Result<(), PkiError> {
    if (1..=MAX_DAYS).contains(&days) {
        Ok(())
    } else {
        Err(PkiError::InvalidDays { days })
    }
}

/// What a new CA looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaOptions {
    /// Subject CN. `None`: `<organization> CA <first 8 hex digits of the key id>` (with the
    /// role, `<organization> users CA <id>` / `<organization> backend CA <id>`), so CAs made on
    /// different machines are told apart in every tool that prints an issuer.
    pub common_name: Option<String>,
    /// Subject O.
    pub organization: String,
    pub days: u32,
    /// What the CA is for, written into its subject as an OU ([`CaRole::unit`]); `None`: a CA
    /// that declares no role (hosts' certificates, or anything outside virtgate's roles).
    pub role: Option<CaRole>,
}

impl Default for CaOptions {
    fn default() -> Self {
        CaOptions {
            common_name: None,
            organization: "virtgate".into(),
            days: CA_DAYS,
            role: None,
        }
    }
}

/// A certificate authority kept in a directory as `cacert.pem` + `cakey.pem`.
pub struct Ca {
    files: CaFiles,
    cert_pem: String,
    cert_der: Vec<u8>,
    subject: String,
    not_after: OffsetDateTime,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("dir", &self.files.dir)
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Creates a new ECDSA P-256 CA with [`CaOptions::default`] in `dir`.
    pub fn init(dir: &Path) -> Result<Ca, PkiError> {
        Self::init_with(dir, &CaOptions::default())
    }

    /// Creates a new ECDSA P-256 CA in `dir` (created 0700 if missing): `cakey.pem` (0600) and
    /// `cacert.pem`. Refuses when either file is already there: replacing a CA silently would
    /// orphan every certificate it issued.
    pub fn init_with(dir: &Path, options: &CaOptions) -> Result<Ca, PkiError> {
        validate_days(options.days)?;
        let files = CaFiles::in_dir(dir);
        for (path, file) in [(&files.cert, CA_CERT), (&files.key, CA_KEY)] {
            if path.exists() {
                return Err(PkiError::CaExists {
                    dir: dir.to_path_buf(),
                    file,
                });
            }
        }
        ensure_dir(dir)?;
        let (params, key, cert) = self_signed(options)?;
        write_file(&files.key, &key.serialize_pem(), KEY_MODE, Existing::Refuse)?;
        if let Err(e) = write_file(&files.cert, &cert.pem(), CERT_MODE, Existing::Refuse) {
            // A key without its certificate would make the next `init` refuse and `load` fail.
            let _ = fs::remove_file(&files.key);
            return Err(e);
        }
        Ok(Self::assemble(files, &cert, params, key))
    }

    /// A new CA that exists only in memory ([`Ca::files`] names no real directory): for
    /// throwaway certificates, e.g. the broker's check that a host refuses a CA it cannot trust.
    pub fn in_memory(options: &CaOptions) -> Result<Ca, PkiError> {
        validate_days(options.days)?;
        let (params, key, cert) = self_signed(options)?;
        Ok(Self::assemble(
            CaFiles::in_dir(Path::new("")),
            &cert,
            params,
            key,
        ))
    }

    fn assemble(
        files: CaFiles,
        cert: &rcgen::Certificate,
        params: CertificateParams,
        key: KeyPair,
    ) -> Ca {
        let der = cert.der().to_vec();
        let (subject, not_after) = subject_and_expiry(&der);
        Ca {
            files,
            cert_pem: cert.pem(),
            cert_der: der,
            subject,
            not_after,
            issuer: Issuer::new(params, key),
        }
    }

    /// Loads the CA in `dir`. The key must be unencrypted PKCS#8 (what `init` writes);
    /// `cacert.pem` may be a bundle, the CA is the certificate that matches the key.
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        Self::load_from(CaFiles::in_dir(dir))
    }

    /// Loads a CA from a certificate file (or bundle) and its key file kept elsewhere, e.g.
    /// the broker's `user_ca_files` and `user_ca_key_file`.
    pub fn load_files(cert: &Path, key: &Path) -> Result<Ca, PkiError> {
        Self::load_from(CaFiles {
            dir: cert.parent().unwrap_or(Path::new("")).to_path_buf(),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        })
    }

    fn load_from(files: CaFiles) -> Result<Ca, PkiError> {
        let dir = files.dir.as_path();
        let read = |path: &Path, file: &'static str| {
            fs::read_to_string(path).map_err(|source| match source.kind() {
                ErrorKind::NotFound => PkiError::NoCa {
                    dir: dir.to_path_buf(),
                    file,
                },
                _ => PkiError::io("read", path, source),
            })
        };
        let cert_text = read(&files.cert, CA_CERT)?;
        let key_text = read(&files.key, CA_KEY)?;
        let key = KeyPair::from_pem(&key_text).map_err(|_| PkiError::BadKey {
            path: files.key.clone(),
            reason: format!(
                "not an unencrypted PKCS#8 ECDSA or RSA key (\"BEGIN PRIVATE KEY\"); convert it with \
                 `certtool --load-privkey {0} --to-p8 --password '' --outfile {0}.p8` and put \
                 the result in its place",
                files.key.display()
            ),
        })?;
        let bad_cert = |reason: String| PkiError::BadCertificate {
            path: files.cert.clone(),
            reason,
        };
        let ders = certificate_ders(&cert_text)
            .map_err(|e| bad_cert(format!("{e}; restore the CA certificate")))?;
        let spki = key.subject_public_key_info();
        let der = ders
            .into_iter()
            .find(|der| parse_cert(der).is_ok_and(|c| c.public_key().raw == spki.as_slice()))
            .ok_or_else(|| {
                bad_cert(format!(
                    "no certificate in it belongs to {}; put the CA certificate that was made \
                     with this key back, or create a new CA with `virtgate pki init`",
                    files.key.display()
                ))
            })?;
        {
            let cert = parse_cert(&der).map_err(bad_cert)?;
            if !is_ca(&cert) {
                return Err(bad_cert(
                    "it is not a CA certificate (no basicConstraints CA:TRUE), so peers would \
                     not accept what it signs; create a CA with `virtgate pki init`"
                        .into(),
                ));
            }
        }
        let (subject, not_after) = subject_and_expiry(&der);
        if not_after <= OffsetDateTime::now_utc() {
            return Err(PkiError::CaExpired {
                dir: dir.to_path_buf(),
                not_after: crate::pem::format_time(not_after),
            });
        }
        let issuer =
            Issuer::from_ca_cert_der(&der.as_slice().into(), key).map_err(PkiError::Sign)?;
        Ok(Ca {
            files,
            // A CA loaded from a bundle hands out only itself.
            cert_pem: certificate_pem(&der),
            cert_der: der,
            subject,
            not_after,
            issuer,
        })
    }

    pub fn files(&self) -> &CaFiles {
        &self.files
    }

    pub fn dir(&self) -> &Path {
        &self.files.dir
    }

    /// The CA certificate, PEM: what every peer that trusts this CA needs as `cacert.pem`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Subject DN as [`subject_dn`](crate::subject_dn) writes it, e.g.
    /// `O=virtgate,CN=virtgate CA 1a2b3c4d`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The role the CA declares in its subject ([`CaRole::of_certificate`]).
    pub fn role(&self) -> Option<CaRole> {
        CaRole::of_certificate(&self.cert_der)
    }

    /// Signs a server certificate for a new key; nothing is written.
    pub fn sign_server(&self, request: &ServerRequest) -> Result<Issued, PkiError> {
        self.sign_server_for(request, None)
    }

    /// Signs a server certificate for `key_pem` (PEM), or a new key; nothing is written.
    fn sign_server_for(
        &self,
        request: &ServerRequest,
        key_pem: Option<&str>,
    ) -> Result<Issued, PkiError> {
        validate_days(request.days)?;
        let (dns, ips) = request.subject_alt_names()?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, request.name.trim());
        let mut sans = Vec::new();
        for name in &dns {
            let ia5 = name
                .clone()
                .try_into()
                .map_err(|_| invalid_name(name, "it is not ASCII"))?;
            sans.push(SanType::DnsName(ia5));
        }
        sans.extend(ips.iter().copied().map(SanType::IpAddress));
        let purpose = ExtendedKeyUsagePurpose::ServerAuth;
        self.sign(dn, sans, request.days, purpose, key_pem)
    }

    /// Signs a client certificate for a new key; nothing is written.
    pub fn sign_client(&self, request: &ClientRequest) -> Result<Issued, PkiError> {
        self.sign_client_for(request, None)
    }

    /// Signs a client certificate for `key_pem` (PEM), or a new key; nothing is written.
    fn sign_client_for(
        &self,
        request: &ClientRequest,
        key_pem: Option<&str>,
    ) -> Result<Issued, PkiError> {
        validate_days(request.days)?;
        let dn = parse_dn(&request.dn)?;
        let purpose = ExtendedKeyUsagePurpose::ClientAuth;
        self.sign(dn, Vec::new(), request.days, purpose, key_pem)
    }

    fn sign(
        &self,
        dn: DistinguishedName,
        sans: Vec<SanType>,
        days: u32,
        purpose: ExtendedKeyUsagePurpose,
        key_pem: Option<&str>,
    ) -> Result<Issued, PkiError> {
        let key = match key_pem {
            Some(pem) => KeyPair::from_pem(pem).map_err(PkiError::Sign)?,
            None => {
                KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(PkiError::Sign)?
            }
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        // A certificate outliving its CA would only fail later, at a worse moment.
        params.not_after = (now + Duration::days(days.into())).min(self.not_after);
        params.use_authority_key_identifier_extension = true;
        // libvirt checks Key Usage on its own and on the peer's certificate in every session;
        // rcgen marks KU critical, and a critical KU without keyEncipherment is refused even for
        // ECDSA keys, which never encipher. So both bits, always.
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![purpose];
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(PkiError::Sign)?;
        let der = cert.der().to_vec();
        let (subject, not_after) = subject_and_expiry(&der);
        let (dns_names, ip_addresses) = parse_certificate(&der, 0)
            .map(|info| (info.dns_names, info.ip_addresses))
            .unwrap_or_default();
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            subject,
            dns_names,
            ip_addresses,
            not_after,
        })
    }
}

/// A new ECDSA P-256 key and a self-signed CA certificate for it, as `options` say.
fn self_signed(
    options: &CaOptions,
) -> Result<(CertificateParams, KeyPair, rcgen::Certificate), PkiError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(PkiError::Sign)?;
    let mut params = CertificateParams::default();
    let common_name = match &options.common_name {
        Some(cn) => cn.clone(),
        None => {
            let id = params.key_identifier(&key);
            let role = options
                .role
                .map(|r| format!(" {}", r.as_str()))
                .unwrap_or_default();
            format!(
                "{}{role} CA {}",
                options.organization,
                hex::encode(&id[..4])
            )
        }
    };
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, options.organization.as_str());
    if let Some(role) = options.role {
        dn.push(DnType::OrganizationalUnitName, role.unit());
    }
    dn.push(DnType::CommonName, common_name.as_str());
    params.distinguished_name = dn;
    // Path length 0: this CA signs leaves only, so a leaf key can never act as a CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(options.days.into());
    let cert = params.self_signed(&key).map_err(PkiError::Sign)?;
    Ok((params, key, cert))
}

/// The subject DN string and the end of validity of a certificate this CA made or loaded.
fn subject_and_expiry(der: &[u8]) -> (String, OffsetDateTime) {
    match parse_certificate(der, 0) {
        Ok(info) => (
            info.subject,
            OffsetDateTime::from_unix_timestamp(info.not_after)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        ),
        Err(_) => (String::new(), OffsetDateTime::UNIX_EPOCH),
    }
}

fn invalid_name(name: &str, reason: &str) -> PkiError {
    PkiError::InvalidName {
        name: name.to_string(),
        reason: reason.to_string(),
    }
}

/// Checks a DNS name the way certificate consumers will parse it: ASCII labels of letters,
/// digits, `-` and `_`, optionally a leading `*.` wildcard.
fn validate_dns_name(name: &str) -> Result<String, PkiError> {
    let trimmed = name.trim().trim_end_matches('.');
    if trimmed.is_empty() {
        return Err(invalid_name(name, "it is empty"));
    }
    if trimmed.len() > 253 {
        return Err(invalid_name(name, "it is longer than 253 characters"));
    }
    let body = trimmed.strip_prefix("*.").unwrap_or(trimmed);
    for label in body.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(invalid_name(name, "it has an empty or over-long label"));
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid_name(
                name,
                "only letters, digits, '-' and '_' are allowed (use punycode for IDNs)",
            ));
        }
    }
    Ok(trimmed.to_string())
}

/// What a server certificate should say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRequest {
    /// Subject CN; also always put into the SANs (as an IP address SAN if it is one).
    pub name: String,
    /// More DNS names clients may use (short name, aliases). An entry that is an IP address is
    /// treated as one.
    pub dns: Vec<String>,
    /// IP addresses clients may use.
    pub ips: Vec<IpAddr>,
    pub days: u32,
}

impl ServerRequest {
    /// A request for `name` alone, valid [`LEAF_DAYS`].
    pub fn new(name: &str) -> Self {
        ServerRequest {
            name: name.to_string(),
            dns: Vec::new(),
            ips: Vec::new(),
            days: LEAF_DAYS,
        }
    }

    /// The SANs the certificate will carry: the CN first, then every DNS name and address,
    /// without duplicates. Never just the CN in the subject: clients match SANs only.
    pub fn subject_alt_names(&self) -> Result<(Vec<String>, Vec<IpAddr>), PkiError> {
        let mut dns: Vec<String> = Vec::new();
        let mut ips: Vec<IpAddr> = Vec::new();
        let add_ip = |ip: IpAddr, ips: &mut Vec<IpAddr>| {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        };
        for name in std::iter::once(&self.name).chain(&self.dns) {
            let bare = name.trim().trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = bare.parse::<IpAddr>() {
                add_ip(ip, &mut ips);
                continue;
            }
            let name = validate_dns_name(name)?;
            if !dns.iter().any(|d| d.eq_ignore_ascii_case(&name)) {
                dns.push(name);
            }
        }
        for ip in &self.ips {
            add_ip(*ip, &mut ips);
        }
        Ok((dns, ips))
    }
}

/// What a client certificate should say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRequest {
    /// Subject DN, e.g. `C=GB,O=Example,CN=alice` (C, ST, L, O, OU, CN; CN required).
    pub dn: String,
    pub days: u32,
}

impl ClientRequest {
    /// A request for `dn`, valid [`LEAF_DAYS`].
    pub fn new(dn: &str) -> Self {
        ClientRequest {
            dn: dn.to_string(),
            days: LEAF_DAYS,
        }
    }
}

/// A signed certificate and its new private key, not yet written anywhere.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// Subject DN as [`subject_dn`](crate::subject_dn) writes it, e.g.
    /// `C=GB,O=Example,CN=alice`: what a proxy rule or `tls_allowed_dn_list` matches.
    pub subject: String,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Debug output ends up in logs; the private key must not.
        f.debug_struct("Issued")
            .field("subject", &self.subject)
            .field("dns_names", &self.dns_names)
            .field("ip_addresses", &self.ip_addresses)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Issued {
    /// The certificate's SPKI SHA-256 pin: what a broker that trusts the peer by pin compares.
    pub fn pin(&self) -> Result<crate::Pin, PkiError> {
        use rustls::pki_types::pem::PemObject;
        let bad = |reason: String| PkiError::BadCertificate {
            path: PathBuf::from("(in memory)"),
            reason,
        };
        let cert = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| bad(e.to_string()))?;
        crate::spki_pin(&cert).map_err(|e| bad(e.to_string()))
    }

    /// The certificate and key as rustls takes them, for an identity that is never written
    /// anywhere (the broker's throwaway bypass-check certificates).
    pub fn in_memory(&self) -> Result<InMemoryIdentity, PkiError> {
        use rustls::pki_types::pem::PemObject;
        let bad = |reason: String| PkiError::BadCertificate {
            path: PathBuf::from("(in memory)"),
            reason,
        };
        let cert = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| bad(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| bad(e.to_string()))?;
        Ok(InMemoryIdentity {
            subject: self.subject.clone(),
            chain: vec![cert],
            key,
        })
    }
}

/// A client certificate and its private key in memory, in the types rustls takes.
pub struct InMemoryIdentity {
    /// Subject DN, as [`Issued::subject`].
    pub subject: String,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for InMemoryIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Debug output ends up in logs; the private key must not.
        f.debug_struct("InMemoryIdentity")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// Where and how [`issue_server`] / [`issue_client`] write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Created 0700 if missing.
    pub dir: PathBuf,
    /// Replace an existing certificate and key (renewal). Without it, existing files make the
    /// call fail before anything is written.
    pub replace: bool,
    /// PEM certificates of further CAs to put into `cacert.pem` after the issuing CA: a libvirt
    /// client checks its own certificate and the server's against this one file, so a client
    /// talking to a server from another CA needs both (real-libvirtd.md pitfall 7).
    pub also_trust_pem: String,
    /// Keep the private key already in `dir` and replace only the certificate (implies
    /// `replace`): a renewal that keeps the key, so a peer that pinned it needs no new approval.
    pub reuse_key: bool,
}

impl Output {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Output {
            dir: dir.into(),
            replace: false,
            also_trust_pem: String::new(),
            reuse_key: false,
        }
    }

    /// The key to sign for when `reuse_key` is set: the one in `path`, as written there.
    fn key_to_reuse(&self, path: &Path) -> Result<Option<String>, PkiError> {
        if !self.reuse_key {
            return Ok(None);
        }
        let pem = fs::read_to_string(path).map_err(|e| PkiError::NoKeyToReuse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        KeyPair::from_pem(&pem).map_err(|e| PkiError::NoKeyToReuse {
            path: path.to_path_buf(),
            reason: format!("it holds no private key this tool can sign for ({e})"),
        })?;
        Ok(Some(pem))
    }
}

/// A server certificate written in libvirt's server layout.
#[derive(Debug, Clone)]
pub struct ServerBundle {
    pub files: ServerFiles,
    pub issued: Issued,
}

/// A client certificate written as a libvirt `pkipath` directory.
#[derive(Debug, Clone)]
pub struct ClientBundle {
    pub files: ClientFiles,
    pub issued: Issued,
}

/// Issues a server certificate and writes `servercert.pem`, `serverkey.pem` (0600) and
/// `cacert.pem` into `out.dir`. A backend CA is refused ([`issuer_fits`]).
pub fn issue_server(
    ca: &Ca,
    request: &ServerRequest,
    out: &Output,
) -> Result<ServerBundle, PkiError> {
    let files = ServerFiles::in_dir(&out.dir);
    issuer_fits(ca.role(), Issuing::Server)?;
    let key = out.key_to_reuse(&files.key)?;
    let issued = ca.sign_server_for(request, key.as_deref())?;
    write_leaf(ca, out, &files.cert, &files.key, &files.ca_cert, &issued)?;
    Ok(ServerBundle { files, issued })
}

/// Issues a client certificate and writes the `pkipath` layout into `out.dir`: `cacert.pem`,
/// `clientcert.pem`, `clientkey.pem` (0600). A CA whose role does not fit the DN is refused
/// ([`issuer_fits`]): people's certificates never come from a backend CA, the gateway's backend
/// identity never from a users' CA.
pub fn issue_client(
    ca: &Ca,
    request: &ClientRequest,
    out: &Output,
) -> Result<ClientBundle, PkiError> {
    let files = ClientFiles::in_dir(&out.dir);
    issuer_fits(ca.role(), Issuing::Client { dn: &request.dn })?;
    let key = out.key_to_reuse(&files.key)?;
    let issued = ca.sign_client_for(request, key.as_deref())?;
    write_leaf(ca, out, &files.cert, &files.key, &files.ca_cert, &issued)?;
    Ok(ClientBundle { files, issued })
}

fn write_leaf(
    ca: &Ca,
    out: &Output,
    cert: &Path,
    key: &Path,
    ca_cert: &Path,
    issued: &Issued,
) -> Result<(), PkiError> {
    let extra =
        certificate_ders(&out.also_trust_pem).map_err(|reason| PkiError::BadTrust { reason })?;
    if !out.also_trust_pem.trim().is_empty() && extra.is_empty() {
        return Err(PkiError::BadTrust {
            reason: "it holds no PEM certificate".into(),
        });
    }
    let existing = if out.replace || out.reuse_key {
        Existing::Replace
    } else {
        for path in [cert, key] {
            if path.exists() {
                return Err(PkiError::Exists {
                    path: path.to_path_buf(),
                });
            }
        }
        Existing::Refuse
    };
    ensure_dir(&out.dir)?;
    // The bundle is settled first: if it conflicts, nothing new has been written yet.
    write_ca_bundle(
        ca,
        ca_cert,
        &out.also_trust_pem,
        &extra,
        out.replace || out.reuse_key,
    )?;
    // A reused key stays as it is: same bytes, same mode, no moment without it.
    if !out.reuse_key {
        write_file(key, &issued.key_pem, KEY_MODE, existing)?;
    }
    write_file(cert, &issued.cert_pem, CERT_MODE, existing)
}

/// Makes `path` trust the issuing CA (plus `extra`). A file that already holds all of them is
/// left alone, so a bundle an operator assembled survives re-issuing.
fn write_ca_bundle(
    ca: &Ca,
    path: &Path,
    extra_pem: &str,
    extra: &[Vec<u8>],
    replace: bool,
) -> Result<(), PkiError> {
    let mut wanted: Vec<&[u8]> = vec![ca.cert_der()];
    wanted.extend(extra.iter().map(Vec::as_slice));
    let mut text = ca.cert_pem().to_string();
    if !extra.is_empty() {
        text.push_str(extra_pem.trim());
        text.push('\n');
    }
    match fs::read_to_string(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            write_file(path, &text, CERT_MODE, Existing::Refuse)
        }
        Err(source) => Err(PkiError::io("read", path, source)),
        Ok(current) => {
            let have = certificate_ders(&current).unwrap_or_default();
            if wanted
                .iter()
                .all(|w| have.iter().any(|h| h.as_slice() == *w))
            {
                Ok(())
            } else if replace {
                write_file(path, &text, CERT_MODE, Existing::Replace)
            } else {
                Err(PkiError::ForeignCaFile {
                    path: path.to_path_buf(),
                })
            }
        }
    }
}

/// Reads PEM certificates from `paths` for [`Output::also_trust_pem`].
pub fn read_trust_files(paths: &[PathBuf]) -> Result<String, PkiError> {
    let mut out = String::new();
    for path in paths {
        let text = read_to_string(path)?;
        match certificate_ders(&text) {
            Ok(ders) if !ders.is_empty() => {}
            Ok(_) => {
                return Err(PkiError::BadTrust {
                    reason: format!("{} holds no PEM certificate", path.display()),
                })
            }
            Err(e) => {
                return Err(PkiError::BadTrust {
                    reason: format!("{}: {e}", path.display()),
                })
            }
        }
        out.push_str(text.trim());
        out.push('\n');
    }
    Ok(out)
}

/// The addresses every development server certificate covers, so `localhost` URIs work over
/// IPv4 and IPv6.
pub(crate) const LOOPBACK: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::LOCALHOST),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans_start_with_the_cn_and_hold_every_name_once() {
        let mut req = ServerRequest::new("gw.example.com");
        req.dns = vec!["gw".into(), "GW.example.com".into(), "10.0.0.5".into()];
        req.ips = vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        let (dns, ips) = req.subject_alt_names().unwrap();
        assert_eq!(dns, ["gw.example.com", "gw"]);
        assert_eq!(
            ips,
            [
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
    }

    #[test]
    fn a_cn_that_is_an_address_becomes_an_ip_san() {
        let (dns, ips) = ServerRequest::new("192.0.2.7").subject_alt_names().unwrap();
        assert!(dns.is_empty());
        assert_eq!(ips, ["192.0.2.7".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn bad_dns_names_are_refused_naming_the_name() {
        for bad in ["", "gw example", "gw..example", "ünï.example"] {
            let mut req = ServerRequest::new("gw.example");
            req.dns = vec![bad.into()];
            let err = req.subject_alt_names().unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }
}
