//! The development PKI keeps the two CA roles apart: what hosts trust (the backend CA) signs
//! nothing a user holds, and what users hold (the users' CA) is never what hosts trust. A data
//! directory from before the split is moved to that layout once, keeping the admin bundle.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use virtgate_pki::{
    bootstrap_dev, check, issue_client, issue_server, Ca, CaOptions, CaRole, CheckOptions,
    ClientRequest, Level, Output, ServerRequest, ADMIN_DN, BACKEND_DN,
};
use x509_parser::prelude::{FromDer, X509Certificate};

fn first_der(path: &Path) -> Vec<u8> {
    let text = fs::read_to_string(path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes()).unwrap();
    pem.contents
}

fn signed_by(cert: &Path, ca: &Path) -> bool {
    let (leaf, ca) = (first_der(cert), first_der(ca));
    let (_, leaf) = X509Certificate::from_der(&leaf).unwrap();
    let (_, ca) = X509Certificate::from_der(&ca).unwrap();
    leaf.verify_signature(Some(ca.public_key())).is_ok()
}

fn role(ca_cert: &Path) -> Option<CaRole> {
    CaRole::of_certificate(&first_der(ca_cert))
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            out.insert(path.clone(), fs::read(&path).unwrap());
        }
    }
    out
}

#[test]
fn hosts_trust_a_backend_ca_that_signs_only_the_gateways_backend_identity() {
    let data = tempfile::tempdir().unwrap();
    let pki = bootstrap_dev(data.path(), &["gw".into()], &[]).unwrap();

    assert_eq!(role(&pki.users_ca.cert), Some(CaRole::Users));
    assert_eq!(role(&pki.backend_ca.cert), Some(CaRole::Backend));
    assert_ne!(
        first_der(&pki.users_ca.cert),
        first_der(&pki.backend_ca.cert),
        "two CAs"
    );

    assert!(signed_by(&pki.backend.cert, &pki.backend_ca.cert));
    assert!(
        !signed_by(&pki.backend.cert, &pki.users_ca.cert),
        "the backend identity chains to the backend CA only"
    );
    for (what, cert) in [("admin", &pki.admin.cert), ("server", &pki.server.cert)] {
        assert!(signed_by(cert, &pki.users_ca.cert), "{what}");
        assert!(
            !signed_by(cert, &pki.backend_ca.cert),
            "{what} must not chain to what hosts trust"
        );
    }
    // What each bundle trusts: the admin verifies the gateway, the backend bundle its own CA.
    assert_eq!(first_der(&pki.admin.ca_cert), first_der(&pki.users_ca.cert));
    assert_eq!(
        first_der(&pki.backend.ca_cert),
        first_der(&pki.backend_ca.cert)
    );

    let report = check(&pki.backend.dir, &CheckOptions::default()).unwrap();
    assert!(report.passed(), "{report}");
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.level == Level::Ok && f.message.contains("from the backend CA")),
        "{report}"
    );
    assert_eq!(report.warnings().count(), 0, "{report}");
}

/// What `virtgate up` created before the split: one CA (O=virtgate-dev, no role) for the
/// server certificate, the backend identity and the admin bundle.
fn single_ca_layout(data: &Path) -> PathBuf {
    let root = data.join("pki");
    let ca = Ca::init_with(
        &root.join("ca"),
        &CaOptions {
            organization: "virtgate-dev".into(),
            ..CaOptions::default()
        },
    )
    .unwrap();
    let mut server = ServerRequest::new("gw");
    server.dns = vec!["localhost".into()];
    server.ips = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
    issue_server(&ca, &server, &Output::new(root.join("server"))).unwrap();
    issue_client(
        &ca,
        &ClientRequest::new(ADMIN_DN),
        &Output::new(root.join("admin")),
    )
    .unwrap();
    // `issue_client` now refuses the backend identity from this CA, so write it by hand.
    let backend = root.join("backend");
    fs::create_dir(&backend).unwrap();
    let issued = ca.sign_client(&ClientRequest::new(BACKEND_DN)).unwrap();
    fs::write(backend.join("cacert.pem"), ca.cert_pem()).unwrap();
    fs::write(backend.join("clientcert.pem"), &issued.cert_pem).unwrap();
    fs::write(backend.join("clientkey.pem"), &issued.key_pem).unwrap();
    fs::set_permissions(
        backend.join("clientkey.pem"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    root
}

#[test]
fn a_single_ca_directory_keeps_its_ca_for_users_and_gets_a_backend_ca_once() {
    let data = tempfile::tempdir().unwrap();
    let root = single_ca_layout(data.path());
    let old_ca = snapshot(&root.join("ca"));
    let old_admin = snapshot(&root.join("admin"));
    let old_server = snapshot(&root.join("server"));
    let old_backend_key = fs::read(root.join("backend/clientkey.pem")).unwrap();

    // Before: `check` can tell that the backend identity comes from the users' CA.
    let before = check(&root.join("backend"), &CheckOptions::default()).unwrap();
    assert!(
        before
            .problems()
            .any(|f| f.message.contains("a users' CA") && f.message.contains("--role backend")),
        "{before}"
    );

    let pki = bootstrap_dev(data.path(), &["gw".into()], &[]).unwrap();

    assert!(pki.backend_reissued, "the start says what changed");
    assert_eq!(
        pki.created,
        [pki.backend_ca.dir.clone(), pki.backend.dir.clone()]
    );
    assert_eq!(role(&pki.users_ca.cert), Some(CaRole::Users), "the old CA");
    assert_eq!(snapshot(&pki.users_ca.dir), old_ca, "the users' CA is kept");
    assert_eq!(
        snapshot(&pki.admin.dir),
        old_admin,
        "admin bundles keep working"
    );
    assert_eq!(snapshot(&pki.server.dir), old_server);
    assert_ne!(fs::read(&pki.backend.key).unwrap(), old_backend_key);
    assert!(signed_by(&pki.backend.cert, &pki.backend_ca.cert));
    assert!(!signed_by(&pki.backend.cert, &pki.users_ca.cert));
    let after = check(&pki.backend.dir, &CheckOptions::default()).unwrap();
    assert!(after.passed(), "{after}");

    let again = bootstrap_dev(data.path(), &["gw".into()], &[]).unwrap();
    assert!(!again.backend_reissued, "only once");
    assert!(again.created.is_empty(), "{:?}", again.created);
}

#[test]
fn check_finds_a_libvirt_host_that_trusts_the_users_ca() {
    let data = tempfile::tempdir().unwrap();
    let pki = bootstrap_dev(data.path(), &[], &[]).unwrap();
    // A host set up as the old docs said: its own CA, plus the gateway's (users') CA appended.
    let hosts_ca = Ca::init(&data.path().join("hosts-ca")).unwrap();
    let etc = data.path().join("etc-pki");
    let host = issue_server(
        &hosts_ca,
        &ServerRequest::new("h1"),
        &Output::new(etc.join("libvirt")),
    )
    .unwrap();
    fs::create_dir_all(etc.join("CA")).unwrap();
    let mut trusted = hosts_ca.cert_pem().to_string();
    trusted.push_str(&fs::read_to_string(&pki.users_ca.cert).unwrap());
    fs::write(etc.join("CA/cacert.pem"), &trusted).unwrap();
    fs::remove_file(&host.files.ca_cert).unwrap(); // the system layout keeps it in ../CA

    let report = check(&etc.join("libvirt"), &CheckOptions::default()).unwrap();
    assert!(
        report
            .problems()
            .any(|f| f.message.contains("a users' CA") && f.message.contains("backend CA")),
        "{report}"
    );

    // As the new docs say: the hosts' CA and the backend CA.
    let mut trusted = hosts_ca.cert_pem().to_string();
    trusted.push_str(&fs::read_to_string(&pki.backend_ca.cert).unwrap());
    fs::write(etc.join("CA/cacert.pem"), &trusted).unwrap();
    let report = check(&etc.join("libvirt"), &CheckOptions::default()).unwrap();
    assert!(report.passed(), "{report}");
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.message.contains("tls_allowed_dn_list")),
        "{report}"
    );

    // The gateway's own server files are signed by the users' CA on purpose.
    let gateway = check(&pki.server.dir, &CheckOptions::default()).unwrap();
    assert!(gateway.passed(), "{gateway}");
    assert_eq!(gateway.warnings().count(), 0, "{gateway}");
}

#[test]
fn a_ca_refuses_to_sign_what_its_role_is_not_for() {
    let data = tempfile::tempdir().unwrap();
    let pki = bootstrap_dev(data.path(), &[], &[]).unwrap();
    let users = Ca::load(&pki.users_ca.dir).unwrap();
    let backend = Ca::load(&pki.backend_ca.dir).unwrap();
    let out = data.path().join("out");

    let err = issue_client(
        &backend,
        &ClientRequest::new("CN=alice"),
        &Output::new(&out),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("backend CA"), "{err}");
    let err = issue_client(&users, &ClientRequest::new(BACKEND_DN), &Output::new(&out))
        .unwrap_err()
        .to_string();
    assert!(err.contains("virtgate pki issue backend"), "{err}");
    let err = issue_server(&backend, &ServerRequest::new("h1"), &Output::new(&out))
        .unwrap_err()
        .to_string();
    assert!(err.contains("backend CA"), "{err}");
    assert!(!out.exists(), "nothing written");
}
