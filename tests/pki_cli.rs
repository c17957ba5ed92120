//! `virtgate pki`, through the real binary: a CA, libvirt server and client certificates, and
//! `check`. The certificates are read back with x509-parser, checked with GnuTLS's certtool
//! (the TLS library libvirt uses) and presented to a real libvirtd.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use time::{Duration, OffsetDateTime};
use virtgate_pki::rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use virtgate_pki::x509_parser::certificate::X509Certificate;
use virtgate_pki::x509_parser::extensions::GeneralName;
use virtgate_pki::x509_parser::pem::parse_x509_pem;
use virtgate_pki::x509_parser::public_key::PublicKey;
use virtgate_testlab::libvirtd::{Libvirtd, LibvirtdOptions};
use virtgate_testlab::require_root_and_tools;

const VIRTGATE: &str = env!("CARGO_BIN_EXE_virtgate");

/// Runs `virtgate ARGS` with no configuration from the environment except `data_dir`.
fn virtgate_in(data_dir: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(VIRTGATE);
    cmd.args(args).env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("VIRTGATE_") {
            cmd.env_remove(k);
        }
    }
    if let Some(d) = data_dir {
        cmd.env("VIRTGATE_BROKER__DATA_DIR", d);
    }
    cmd.output().expect("run virtgate")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `virtgate ARGS` must succeed; returns its stdout.
fn ok(args: &[&str]) -> String {
    let out = virtgate_in(None, args);
    assert!(
        out.status.success(),
        "`virtgate {}` failed:\n{}",
        args.join(" "),
        text(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `virtgate ARGS` must fail; returns stdout and stderr.
fn fails(args: &[&str]) -> String {
    let out = virtgate_in(None, args);
    assert!(
        !out.status.success(),
        "`virtgate {}` should have failed:\n{}",
        args.join(" "),
        text(&out)
    );
    text(&out)
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The DER of the first certificate in a PEM file.
fn der(path: &Path) -> Vec<u8> {
    let pem = fs::read(path).unwrap();
    let (_, block) = parse_x509_pem(&pem).unwrap();
    assert_eq!(block.label, "CERTIFICATE", "{}", path.display());
    block.contents
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    virtgate_pki::x509_parser::parse_x509_certificate(der)
        .unwrap()
        .1
}

fn sans(cert: &X509Certificate<'_>) -> (Vec<String>, Vec<String>) {
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    let san = cert.subject_alternative_name().unwrap().expect("a SAN");
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            GeneralName::IPAddress(b) if b.len() == 4 => {
                ips.push(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string())
            }
            GeneralName::IPAddress(b) => {
                ips.push(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()).to_string())
            }
            other => panic!("unexpected SAN {other:?}"),
        }
    }
    (dns, ips)
}

/// Key Usage digitalSignature + keyEncipherment, critical: what libvirt demands of its own and
/// its peer's certificate in every session.
fn assert_libvirt_key_usage(cert: &X509Certificate<'_>) {
    let ku = cert.key_usage().unwrap().expect("a Key Usage extension");
    assert!(ku.critical);
    assert!(ku.value.digital_signature() && ku.value.key_encipherment());
}

/// A scratch directory with a CA in `ca/`.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn with_ca() -> Scratch {
        let scratch = Scratch {
            dir: tempfile::tempdir().unwrap(),
        };
        ok(&["pki", "init", "--out", s(&scratch.ca())]);
        scratch
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn ca(&self) -> PathBuf {
        self.path("ca")
    }

    fn issue_server(&self, out: &str, name: &str, extra: &[&str]) -> PathBuf {
        let (out, issued) = self.try_issue_server(out, name, extra);
        assert!(issued.status.success(), "{}", text(&issued));
        out
    }

    /// `pki issue server` from this CA into `out`, succeeding or not.
    fn try_issue_server(&self, out: &str, name: &str, extra: &[&str]) -> (PathBuf, Output) {
        let out = self.path(out);
        let ca = self.ca();
        let mut args = vec![
            "pki",
            "issue",
            "server",
            "--ca",
            s(&ca),
            "--name",
            name,
            "--out",
            s(&out),
        ];
        args.extend_from_slice(extra);
        let issued = virtgate_in(None, &args);
        (out, issued)
    }

    fn issue_client(&self, out: &str, dn: &str) -> PathBuf {
        let out = self.path(out);
        ok(&[
            "pki",
            "issue",
            "client",
            "--ca",
            s(&self.ca()),
            "--dn",
            dn,
            "--out",
            s(&out),
        ]);
        out
    }
}

/// Signs `params` with the CA in `ca_dir` using rcgen directly, for certificates `virtgate pki`
/// would never make (expired, CN-only).
fn sign_with(ca_dir: &Path, params: CertificateParams) -> (String, String) {
    let ca_key = KeyPair::from_pem(&fs::read_to_string(ca_dir.join("cakey.pem")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(
        &fs::read_to_string(ca_dir.join("cacert.pem")).unwrap(),
        ca_key,
    )
    .unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn libvirt_leaf_params(cn: &str, purpose: ExtendedKeyUsagePurpose) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![purpose];
    params.use_authority_key_identifier_extension = true;
    params
}

// ---------------------------------------------------------------------------------------------
// init

#[test]
fn init_creates_a_ten_year_p256_ca_with_a_private_key_and_directory() {
    let scratch = Scratch::with_ca();
    let ca = scratch.ca();

    assert_eq!(mode(&ca), 0o700, "CA directory");
    assert_eq!(mode(&ca.join("cakey.pem")), 0o600, "CA key");
    let der = der(&ca.join("cacert.pem"));
    let cert = parse(&der);
    assert!(cert.basic_constraints().unwrap().unwrap().value.ca);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    assert!(matches!(
        cert.public_key().parsed().unwrap(),
        PublicKey::EC(ref p) if p.key_size() == 256
    ));
    let not_after = cert.validity().not_after.to_datetime();
    let left = not_after - OffsetDateTime::now_utc();
    assert!(
        left > Duration::days(3640) && left <= Duration::days(3650),
        "{left}"
    );
}

#[test]
fn init_refuses_to_replace_an_existing_ca_and_says_what_to_do() {
    let scratch = Scratch::with_ca();
    let before = fs::read(scratch.ca().join("cakey.pem")).unwrap();

    let err = fails(&["pki", "init", "--out", s(&scratch.ca())]);

    assert!(err.contains("already exists"), "{err}");
    assert!(
        err.contains("--ca") && err.contains("another directory"),
        "{err}"
    );
    assert_eq!(fs::read(scratch.ca().join("cakey.pem")).unwrap(), before);
}

#[test]
fn without_dir_or_ca_the_ca_lives_in_the_data_directory() {
    let data = tempfile::tempdir().unwrap();
    let out = virtgate_in(Some(data.path()), &["pki", "init"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(data.path().join("pki/ca/cacert.pem").exists());

    let srv = data.path().join("srv");
    let out = virtgate_in(
        Some(data.path()),
        &["pki", "issue", "server", "--name", "h1", "--out", s(&srv)],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        fs::read(srv.join("cacert.pem")).unwrap(),
        fs::read(data.path().join("pki/ca/cacert.pem")).unwrap()
    );
}

// ---------------------------------------------------------------------------------------------
// issue server

#[test]
fn a_server_certificate_covers_its_cn_every_dns_name_and_every_address() {
    let scratch = Scratch::with_ca();
    let out = scratch.issue_server(
        "srv",
        "gw.example.com",
        &[
            "--dns", "gw", "--dns", "gw.lab", "--ip", "10.0.0.1", "--ip", "fd00::1",
        ],
    );

    let der = der(&out.join("servercert.pem"));
    let cert = parse(&der);
    assert_eq!(cert.subject().to_string(), "CN=gw.example.com");
    let (dns, ips) = sans(&cert);
    assert_eq!(dns, ["gw.example.com", "gw", "gw.lab"]);
    assert_eq!(ips, ["10.0.0.1", "fd00::1"]);
    assert_libvirt_key_usage(&cert);
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    assert_eq!(mode(&out.join("serverkey.pem")), 0o600);
    assert_eq!(
        fs::read(out.join("cacert.pem")).unwrap(),
        fs::read(scratch.ca().join("cacert.pem")).unwrap(),
        "the server's cacert.pem is its CA"
    );
}

#[test]
fn a_server_named_by_address_gets_an_ip_san() {
    let scratch = Scratch::with_ca();
    let out = scratch.issue_server("srv", "192.0.2.10", &[]);
    let der = der(&out.join("servercert.pem"));
    assert_eq!(
        sans(&parse(&der)),
        (Vec::<String>::new(), vec!["192.0.2.10".to_string()])
    );
}

#[test]
fn issuing_into_a_used_directory_needs_force_and_force_renews_the_key() {
    let scratch = Scratch::with_ca();
    let out = scratch.issue_server("srv", "h1", &[]);
    let key = fs::read(out.join("serverkey.pem")).unwrap();

    let err = fails(&[
        "pki",
        "issue",
        "server",
        "--ca",
        s(&scratch.ca()),
        "--name",
        "h1",
        "--out",
        s(&out),
    ]);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(fs::read(out.join("serverkey.pem")).unwrap(), key);

    scratch.issue_server("srv", "h1", &["--force"]);
    assert_ne!(fs::read(out.join("serverkey.pem")).unwrap(), key);
    assert_eq!(mode(&out.join("serverkey.pem")), 0o600);
}

#[test]
fn issuing_without_a_ca_says_how_to_create_one() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails(&[
        "pki",
        "issue",
        "server",
        "--ca",
        s(&dir.path().join("none")),
        "--name",
        "h1",
        "--out",
        s(&dir.path().join("srv")),
    ]);
    assert!(err.contains("virtgate pki init"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// issue client

#[test]
fn a_client_bundle_is_a_pkipath_directory_with_the_dn_given() {
    let scratch = Scratch::with_ca();
    let out = scratch.issue_client("alice", "C=GB,O=Example,OU=Ops,CN=alice");

    let mut names: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["cacert.pem", "clientcert.pem", "clientkey.pem"]);
    assert_eq!(mode(&out.join("clientkey.pem")), 0o600);

    let der = der(&out.join("clientcert.pem"));
    let cert = parse(&der);
    assert_eq!(
        cert.subject().to_string(),
        "C=GB, O=Example, OU=Ops, CN=alice"
    );
    assert_libvirt_key_usage(&cert);
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
}

#[test]
fn the_client_bundle_is_announced_with_its_libvirt_uri_parameter() {
    let scratch = Scratch::with_ca();
    let out = scratch.path("bob");
    let printed = ok(&[
        "pki",
        "issue",
        "client",
        "--ca",
        s(&scratch.ca()),
        "--dn",
        "O=Example,CN=bob",
        "--out",
        s(&out),
    ]);
    assert!(
        printed.contains(&format!("?pkipath={}", out.display())),
        "{printed}"
    );
}

#[test]
fn an_unknown_dn_attribute_is_refused_by_name_before_anything_is_written() {
    let scratch = Scratch::with_ca();
    let out = scratch.path("x");
    let err = fails(&[
        "pki",
        "issue",
        "client",
        "--ca",
        s(&scratch.ca()),
        "--dn",
        "O=Example,EMAIL=a@b,CN=x",
        "--out",
        s(&out),
    ]);
    assert!(
        err.contains("\"EMAIL\"") && err.contains("C, ST, L, O, OU, CN"),
        "{err}"
    );
    assert!(!out.exists());
}

// ---------------------------------------------------------------------------------------------
// the two CA roles

/// Runs `virtgate ARGS` with `data` as the data directory; returns its stdout and stderr and
/// whether it succeeded.
fn in_data(data: &Path, args: &[&str]) -> (bool, String) {
    let out = virtgate_in(Some(data), args);
    (out.status.success(), text(&out))
}

#[test]
fn the_users_and_the_backend_ca_have_their_own_directories_and_sign_only_their_own() {
    let data = tempfile::tempdir().unwrap();
    let data = data.path();
    let (done, out) = in_data(data, &["pki", "init"]);
    assert!(done && out.contains("users' CA"), "{out}");
    let (done, out) = in_data(data, &["pki", "init", "--role", "backend"]);
    assert!(done && out.contains("issue backend"), "{out}");
    let users = parse(&der(&data.join("pki/ca/cacert.pem")))
        .subject()
        .to_string();
    let backend = parse(&der(&data.join("pki/backend-ca/cacert.pem")))
        .subject()
        .to_string();
    assert!(users.contains("OU=virtgate-users"), "{users}");
    assert!(backend.contains("OU=virtgate-backend"), "{backend}");

    let gw = data.join("gw");
    let (done, out) = in_data(data, &["pki", "issue", "backend", "--out", s(&gw)]);
    assert!(
        done && out.contains("tls_allowed_dn_list = [\"O=virtgate,CN=virtgate-gateway\"]")
            && out.contains("proxy.backend_cert_file"),
        "{out}"
    );
    let cert = der(&gw.join("clientcert.pem"));
    assert_eq!(
        parse(&cert).subject().to_string(),
        "O=virtgate, CN=virtgate-gateway"
    );
    assert_eq!(parse(&cert).issuer().to_string(), backend);
    let (done, out) = in_data(data, &["pki", "check", s(&gw)]);
    assert!(done && out.contains("from the backend CA"), "{out}");

    // Each CA refuses what the other is for, before writing anything.
    let x = data.join("x");
    let gateway_dn = "O=virtgate,CN=virtgate-gateway";
    let (done, out) = in_data(
        data,
        &["pki", "issue", "client", "--dn", gateway_dn, "--out", s(&x)],
    );
    assert!(!done && out.contains("virtgate pki issue backend"), "{out}");
    let backend_dir = data.join("pki/backend-ca");
    let alice = [
        "pki",
        "issue",
        "client",
        "--ca",
        s(&backend_dir),
        "--dn",
        "CN=alice",
        "--out",
        s(&x),
    ];
    let (done, out) = in_data(data, &alice);
    assert!(!done && out.contains("backend CA"), "{out}");
    let (done, out) = in_data(
        data,
        &[
            "pki",
            "issue",
            "server",
            "--ca",
            s(&backend_dir),
            "--name",
            "h1",
            "--out",
            s(&x),
        ],
    );
    assert!(!done && out.contains("backend CA"), "{out}");
    assert!(!x.exists());
}

#[test]
fn issue_backend_without_a_backend_ca_says_how_to_make_one() {
    let data = tempfile::tempdir().unwrap();
    let (done, out) = in_data(
        data.path(),
        &[
            "pki",
            "issue",
            "backend",
            "--out",
            s(&data.path().join("gw")),
        ],
    );
    assert!(
        !done && out.contains("virtgate pki init --role backend"),
        "{out}"
    );
}

#[test]
fn check_warns_about_a_backend_identity_from_a_ca_that_declares_no_role() {
    let scratch = Scratch::with_ca();
    let gw = scratch.issue_client("gw", "O=virtgate,CN=virtgate-gateway");
    let out = ok(&["pki", "check", s(&gw)]);
    assert!(
        out.contains("warning")
            && out.contains("declares no role")
            && out.contains("--role backend"),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------------
// check

#[test]
fn check_passes_fresh_server_client_and_ca_directories() {
    let scratch = Scratch::with_ca();
    let srv = scratch.issue_server("srv", "gw.example", &["--dns", "gw", "--ip", "10.0.0.1"]);
    let cli = scratch.issue_client("cli", "O=Example,CN=alice");

    for dir in [&srv, &cli, &scratch.ca()] {
        let printed = ok(&["pki", "check", s(dir)]);
        assert!(printed.contains("0 problems"), "{printed}");
    }
    let printed = ok(&[
        "pki",
        "check",
        s(&srv),
        "--hostname",
        "gw.example",
        "--hostname",
        "gw",
        "--hostname",
        "10.0.0.1",
    ]);
    assert!(printed.contains("hostname gw: covered"), "{printed}");
    let single = ok(&["pki", "check", s(&srv.join("servercert.pem"))]);
    assert!(single.contains("0 problems"), "{single}");
}

#[test]
fn check_fails_on_a_key_others_can_read() {
    let scratch = Scratch::with_ca();
    let srv = scratch.issue_server("srv", "h1", &[]);
    let key = srv.join("serverkey.pem");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();

    let err = fails(&["pki", "check", s(&srv)]);

    assert!(err.contains("PROBLEM  serverkey.pem: mode 0644"), "{err}");
    assert!(
        err.contains(&format!("chmod 600 {}", key.display())),
        "{err}"
    );
}

#[test]
fn check_names_a_directory_where_the_key_belongs_once_and_as_such() {
    let scratch = Scratch::with_ca();
    let srv = scratch.issue_server("srv", "h1", &[]);
    let key = srv.join("serverkey.pem");
    fs::remove_file(&key).unwrap();
    fs::create_dir(&key).unwrap();

    let err = fails(&["pki", "check", s(&srv)]);

    assert!(
        err.contains("PROBLEM  serverkey.pem: is a directory, not a key file"),
        "{err}"
    );
    assert_eq!(err.matches("PROBLEM  serverkey.pem").count(), 1, "{err}");
}

/// The pin `pki check` prints for the certificate in `file` of `dir`.
fn pin_of(dir: &Path, file: &str) -> String {
    let printed = ok(&["pki", "check", s(dir)]);
    printed
        .lines()
        .find(|l| l.contains(&format!("{file}: ")) && l.contains("pin sha256:"))
        .and_then(|l| l.split("pin sha256:").nth(1))
        .map(|rest| rest[..64].to_string())
        .unwrap_or_else(|| panic!("no pin for {file}: {printed}"))
}

#[test]
fn a_renewal_with_reuse_key_keeps_the_key_and_its_pin_and_replaces_only_the_certificate() {
    let scratch = Scratch::with_ca();
    let srv = scratch.issue_server("srv", "h1", &["--valid-for", "30d"]);
    let key = fs::read(srv.join("serverkey.pem")).unwrap();
    let cert = fs::read(srv.join("servercert.pem")).unwrap();
    let pin = pin_of(&srv, "servercert.pem");

    let (_, renewed) =
        scratch.try_issue_server("srv", "h1", &["--valid-for", "365d", "--reuse-key"]);
    assert!(renewed.status.success(), "{}", text(&renewed));
    let printed = String::from_utf8_lossy(&renewed.stdout);

    assert!(
        printed.contains(&format!("kept, pin sha256:{pin} unchanged")),
        "{printed}"
    );
    assert_eq!(fs::read(srv.join("serverkey.pem")).unwrap(), key);
    assert_eq!(mode(&srv.join("serverkey.pem")), 0o600);
    assert_ne!(fs::read(srv.join("servercert.pem")).unwrap(), cert);
    assert_eq!(pin_of(&srv, "servercert.pem"), pin);
    let checked = ok(&["pki", "check", s(&srv)]);
    assert!(
        checked.contains("(365 days left)") && checked.contains("0 problems, 0 warnings"),
        "{checked}"
    );

    // Without it, a renewal makes a new key, and the pin changes with it.
    scratch.issue_server("srv", "h1", &["--force"]);
    assert_ne!(pin_of(&srv, "servercert.pem"), pin);
}

#[test]
fn reuse_key_without_a_key_to_reuse_says_what_to_do_and_writes_nothing() {
    let scratch = Scratch::with_ca();
    let (out, refused) = scratch.try_issue_server("empty", "h1", &["--reuse-key"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let err = text(&refused);
    assert!(
        err.contains("cannot reuse the key in") && err.contains("issue without --reuse-key"),
        "{err}"
    );
    assert!(!out.exists(), "nothing written");
}

#[test]
fn check_fails_on_an_expired_certificate() {
    let scratch = Scratch::with_ca();
    let cli = scratch.issue_client("cli", "O=Example,CN=alice");
    let mut params = libvirt_leaf_params("alice", ExtendedKeyUsagePurpose::ClientAuth);
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(30);
    params.not_after = now - Duration::days(1);
    let (cert, key) = sign_with(&scratch.ca(), params);
    fs::write(cli.join("clientcert.pem"), cert).unwrap();
    fs::write(cli.join("clientkey.pem"), key).unwrap();

    let err = fails(&["pki", "check", s(&cli)]);

    assert!(err.contains("PROBLEM  clientcert.pem: expired on"), "{err}");
    assert!(err.contains("virtgate pki issue client --force"), "{err}");
}

#[test]
fn check_warns_about_a_certificate_expiring_within_30_days() {
    let scratch = Scratch::with_ca();
    let cli = scratch.issue_client("cli", "O=Example,CN=alice");
    ok(&[
        "pki",
        "issue",
        "client",
        "--ca",
        s(&scratch.ca()),
        "--dn",
        "O=Example,CN=alice",
        "--valid-for",
        "10d",
        "--force",
        "--out",
        s(&cli),
    ]);

    let printed = ok(&["pki", "check", s(&cli)]);

    assert!(
        printed.contains("warning  clientcert.pem: expires in 10 days"),
        "{printed}"
    );
    assert!(printed.contains("0 problems, 1 warning"), "{printed}");
}

#[test]
fn check_fails_on_a_certificate_from_another_ca() {
    let scratch = Scratch::with_ca();
    ok(&["pki", "init", "--out", s(&scratch.path("other-ca"))]);
    let srv = scratch.path("srv");
    ok(&[
        "pki",
        "issue",
        "server",
        "--ca",
        s(&scratch.path("other-ca")),
        "--name",
        "h1",
        "--out",
        s(&srv),
    ]);
    fs::copy(scratch.ca().join("cacert.pem"), srv.join("cacert.pem")).unwrap();

    let err = fails(&["pki", "check", s(&srv)]);

    assert!(err.contains("PROBLEM  servercert.pem: issued by"), "{err}");
    assert!(err.contains("which is not in cacert.pem"), "{err}");
}

#[test]
fn check_fails_on_a_certificate_from_another_ca_with_the_same_name() {
    let scratch = Scratch {
        dir: tempfile::tempdir().unwrap(),
    };
    for ca in ["ca", "twin"] {
        ok(&[
            "pki",
            "init",
            "--out",
            s(&scratch.path(ca)),
            "--cn",
            "Example CA",
        ]);
    }
    let cli = scratch.path("cli");
    ok(&[
        "pki",
        "issue",
        "client",
        "--ca",
        s(&scratch.path("twin")),
        "--dn",
        "CN=alice",
        "--out",
        s(&cli),
    ]);
    fs::copy(scratch.ca().join("cacert.pem"), cli.join("cacert.pem")).unwrap();

    let err = fails(&["pki", "check", s(&cli)]);

    assert!(err.contains("signature does not verify"), "{err}");
}

#[test]
fn check_fails_on_a_host_name_the_sans_do_not_cover() {
    let scratch = Scratch::with_ca();
    let srv = scratch.issue_server("srv", "gw.example", &["--ip", "10.0.0.1"]);

    let err = fails(&[
        "pki",
        "check",
        s(&srv),
        "--hostname",
        "gw.example",
        "--hostname",
        "gw",
        "--hostname",
        "10.0.0.2",
    ]);

    assert!(
        err.contains("ok       hostname gw.example: covered"),
        "{err}"
    );
    assert!(err.contains("PROBLEM  hostname gw: not covered"), "{err}");
    assert!(err.contains("re-issue with --dns gw"), "{err}");
    assert!(
        err.contains("PROBLEM  hostname 10.0.0.2: not covered"),
        "{err}"
    );
    assert!(err.contains("2 problems in"), "{err}");
}

#[test]
fn check_never_counts_the_cn_as_a_host_name() {
    let scratch = Scratch::with_ca();
    let srv = scratch.issue_server("srv", "h1", &[]);
    // A legacy certificate: the CN is the name clients use, the SAN lists something else.
    let mut params = libvirt_leaf_params("legacy.example", ExtendedKeyUsagePurpose::ServerAuth);
    params.subject_alt_names = vec![SanType::DnsName("other.example".try_into().unwrap())];
    let (cert, key) = sign_with(&scratch.ca(), params);
    fs::write(srv.join("servercert.pem"), cert).unwrap();
    fs::write(srv.join("serverkey.pem"), key).unwrap();

    let err = fails(&["pki", "check", s(&srv), "--hostname", "legacy.example"]);

    assert!(
        err.contains("PROBLEM  hostname legacy.example: not covered"),
        "{err}"
    );
}

#[test]
fn check_fails_on_a_server_certificate_without_sans() {
    let scratch = Scratch::with_ca();
    let srv = scratch.issue_server("srv", "h1", &[]);
    let (cert, key) = sign_with(
        &scratch.ca(),
        libvirt_leaf_params("h1", ExtendedKeyUsagePurpose::ServerAuth),
    );
    fs::write(srv.join("servercert.pem"), cert).unwrap();
    fs::write(srv.join("serverkey.pem"), key).unwrap();

    let err = fails(&["pki", "check", s(&srv)]);

    assert!(err.contains("no subjectAltName"), "{err}");
}

#[test]
fn check_fails_on_a_key_that_belongs_to_another_certificate() {
    let scratch = Scratch::with_ca();
    let a = scratch.issue_server("a", "h1", &[]);
    let b = scratch.issue_server("b", "h1", &[]);
    fs::copy(b.join("serverkey.pem"), a.join("serverkey.pem")).unwrap();

    let err = fails(&["pki", "check", s(&a)]);

    assert!(
        err.contains("PROBLEM  serverkey.pem: does not belong to servercert.pem"),
        "{err}"
    );
}

#[test]
fn check_fails_on_missing_files_of_a_layout() {
    let scratch = Scratch::with_ca();
    let cli = scratch.issue_client("cli", "CN=alice");
    fs::remove_file(cli.join("clientkey.pem")).unwrap();
    fs::remove_file(cli.join("cacert.pem")).unwrap();

    let err = fails(&["pki", "check", s(&cli)]);

    assert!(err.contains("PROBLEM  clientkey.pem: missing"), "{err}");
    assert!(err.contains("PROBLEM  cacert.pem: missing"), "{err}");
}

#[test]
fn check_of_a_path_that_does_not_exist_says_what_to_pass() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails(&["pki", "check", s(&dir.path().join("nope"))]);
    assert!(
        err.contains("does not exist") && err.contains("pkipath"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// real peers: GnuTLS (certtool) and libvirtd

fn certtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("certtool")
        .args(args)
        .output()
        .expect("run certtool");
    (out.status.success(), text(&out))
}

#[test]
fn gnutls_verifies_the_certificates_and_sees_the_usages_libvirt_needs() {
    require_root_and_tools(&["certtool"]);
    let scratch = Scratch::with_ca();
    let srv = scratch.issue_server("srv", "gw.example", &["--dns", "gw", "--ip", "10.0.0.1"]);
    let cli = scratch.issue_client("cli", "C=GB,O=Example,CN=alice");
    let ca = scratch.ca().join("cacert.pem");

    for (cert, purpose, names) in [
        (
            srv.join("servercert.pem"),
            "1.3.6.1.5.5.7.3.1",
            &["gw.example", "gw", "10.0.0.1"][..],
        ),
        (cli.join("clientcert.pem"), "1.3.6.1.5.5.7.3.2", &[][..]),
    ] {
        let (verified, out) = certtool(&[
            "--verify",
            "--load-ca-certificate",
            s(&ca),
            "--infile",
            s(&cert),
            "--verify-purpose",
            purpose,
        ]);
        assert!(
            verified && out.contains("The certificate is trusted"),
            "{out}"
        );
        // certtool takes one --verify-hostname at a time: the check libvirt clients make
        // against the host in their URI (real-libvirtd.md pitfall 6).
        for name in names {
            let (verified, out) = certtool(&[
                "--verify",
                "--load-ca-certificate",
                s(&ca),
                "--infile",
                s(&cert),
                "--verify-hostname",
                name,
            ]);
            assert!(verified, "{name}: {out}");
        }

        let (parsed, info) = certtool(&["-i", "--infile", s(&cert)]);
        assert!(parsed, "{info}");
        let ku = info
            .split("Key Usage (critical):")
            .nth(1)
            .unwrap_or_else(|| panic!("no critical Key Usage: {info}"));
        let ku: String = ku.lines().take(3).collect::<Vec<_>>().join("\n");
        assert!(
            ku.contains("Digital signature.") && ku.contains("Key encipherment."),
            "{ku}"
        );
    }

    let (verified, out) = certtool(&[
        "--verify",
        "--load-ca-certificate",
        s(&ca),
        "--infile",
        s(&srv.join("servercert.pem")),
        "--verify-hostname",
        "elsewhere.example",
    ]);
    assert!(!verified, "a name outside the SANs must not verify: {out}");
}

#[test]
fn check_agrees_with_libvirt_about_certtool_made_certificates() {
    require_root_and_tools(&["certtool"]);
    let dir = tempfile::tempdir().unwrap();
    let d = |rel: &str| dir.path().join(rel);
    fs::write(
        d("ca.info"),
        "cn = certtool CA\nca\ncert_signing_key\nexpiration_days = 30\n",
    )
    .unwrap();
    // The template from real-libvirtd.md §2; certtool writes legacy (PKCS#1 / SEC1) keys.
    fs::write(
        d("server.info"),
        "cn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\n\
         encryption_key\nsigning_key\nexpiration_days = 365\n",
    )
    .unwrap();
    for (key_type, dir_name) in [("rsa", "rsa"), ("ecdsa", "ecdsa")] {
        let pki = d(dir_name);
        fs::create_dir(&pki).unwrap();
        let p = |f: &str| pki.join(f).to_str().unwrap().to_string();
        for args in [
            vec![
                "--generate-privkey",
                "--key-type",
                key_type,
                "--outfile",
                &p("cakey.pem"),
            ],
            vec![
                "--generate-self-signed",
                "--load-privkey",
                &p("cakey.pem"),
                "--template",
                s(&d("ca.info")),
                "--outfile",
                &p("cacert.pem"),
            ],
            vec![
                "--generate-privkey",
                "--key-type",
                key_type,
                "--outfile",
                &p("serverkey.pem"),
            ],
            vec![
                "--generate-certificate",
                "--load-privkey",
                &p("serverkey.pem"),
                "--load-ca-certificate",
                &p("cacert.pem"),
                "--load-ca-privkey",
                &p("cakey.pem"),
                "--template",
                s(&d("server.info")),
                "--outfile",
                &p("servercert.pem"),
            ],
        ] {
            let (done, out) = certtool(&args);
            assert!(done, "certtool {args:?}: {out}");
        }
        fs::remove_file(pki.join("cakey.pem")).unwrap();
        fs::set_permissions(pki.join("serverkey.pem"), fs::Permissions::from_mode(0o600)).unwrap();
    }

    let rsa = ok(&["pki", "check", s(&d("rsa")), "--hostname", "127.0.0.1"]);
    assert!(
        rsa.contains("serverkey.pem: belongs to servercert.pem"),
        "legacy PKCS#1 key matched: {rsa}"
    );
    assert!(rsa.contains("0 problems"), "{rsa}");

    // certtool silently drops encryption_key for ECDSA; libvirt then refuses the certificate
    // ("usage does not permit key encipherment", real-libvirtd.md pitfall 5).
    let ecdsa = fails(&["pki", "check", s(&d("ecdsa"))]);
    assert!(
        ecdsa.contains("Key Usage is critical and lacks keyEncipherment"),
        "{ecdsa}"
    );
    assert!(
        ecdsa.contains("serverkey.pem: belongs to servercert.pem"),
        "legacy SEC1 key matched: {ecdsa}"
    );
}

#[test]
fn a_real_libvirtd_accepts_a_client_bundle_issued_by_virtgate_pki() {
    // The daemon's DN allow-list is written in the form `issue client` prints for it.
    let daemon = Libvirtd::start(LibvirtdOptions {
        tls_allowed_dn_list: Some(vec!["C=GB,O=Example,CN=alice".to_string()]),
        ..LibvirtdOptions::default()
    })
    .unwrap();
    // Its CA, as a `virtgate pki` CA directory, so the bundles chain to what it trusts.
    let scratch = Scratch {
        dir: tempfile::tempdir().unwrap(),
    };
    fs::create_dir(scratch.ca()).unwrap();
    fs::write(scratch.ca().join("cacert.pem"), daemon.ca().cert_pem()).unwrap();
    fs::write(scratch.ca().join("cakey.pem"), daemon.ca().key_pem()).unwrap();
    fs::set_permissions(
        scratch.ca().join("cakey.pem"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    let alice = scratch.issue_client("alice", "C=GB,O=Example,CN=alice");
    let printed = ok(&[
        "pki",
        "issue",
        "client",
        "--ca",
        s(&scratch.ca()),
        "--dn",
        "C=GB,O=Example,CN=bob",
        "--out",
        s(&scratch.path("bob")),
    ]);
    assert!(
        printed.contains("allow \"C=GB,O=Example,CN=bob\""),
        "{printed}"
    );
    let uri = |dir: &Path| {
        format!(
            "test+tls://127.0.0.1:{}/default?pkipath={}",
            daemon.port(),
            dir.display()
        )
    };

    let out = daemon.virsh_at(&uri(&alice), &["list", "--all"]).unwrap();
    let listed = text(&out);
    assert!(out.status.success(), "{listed}\n{}", daemon.log_text());
    assert!(
        listed.contains("test") && listed.contains("running"),
        "{listed}"
    );

    let out = daemon
        .virsh_at(&uri(&scratch.path("bob")), &["list", "--all"])
        .unwrap();
    assert!(
        !out.status.success(),
        "bob is not in tls_allowed_dn_list: {}",
        text(&out)
    );
    let log = daemon.log_text();
    assert!(
        log.contains("not on the list of allowed clients"),
        "refused for its DN, not for its certificate: {log}"
    );
}
