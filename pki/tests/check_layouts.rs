//! `check` recognises every way libvirt hosts lay out their certificate files.

use std::fs;
use std::path::Path;

use virtgate_pki::{
    check, issue_client, issue_server, Ca, CheckOptions, ClientRequest, Layout, Output,
    ServerRequest,
};

fn passes(path: &Path) -> virtgate_pki::Report {
    let report = check(path, &CheckOptions::default()).unwrap();
    assert!(report.passed(), "{report}");
    report
}

#[test]
fn the_system_layout_with_the_ca_apart_and_keys_under_private_passes() {
    // /etc/pki/CA/cacert.pem, /etc/pki/libvirt/servercert.pem,
    // /etc/pki/libvirt/private/serverkey.pem: what libvirtd uses without a configuration file.
    let root = tempfile::tempdir().unwrap();
    let ca = Ca::init(&root.path().join("ca-work")).unwrap();
    let issued = tempfile::tempdir().unwrap();
    let bundle = issue_server(&ca, &ServerRequest::new("h1"), &Output::new(issued.path())).unwrap();
    let etc = root.path().join("etc-pki");
    fs::create_dir_all(etc.join("CA")).unwrap();
    fs::create_dir_all(etc.join("libvirt/private")).unwrap();
    fs::copy(&bundle.files.ca_cert, etc.join("CA/cacert.pem")).unwrap();
    fs::copy(&bundle.files.cert, etc.join("libvirt/servercert.pem")).unwrap();
    fs::copy(&bundle.files.key, etc.join("libvirt/private/serverkey.pem")).unwrap();

    let report = passes(&etc.join("libvirt"));

    assert_eq!(report.layouts, [Layout::Server]);
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.message.contains("libvirt's system layout")),
        "{report}"
    );
}

#[test]
fn a_directory_with_server_and_client_files_is_checked_as_both() {
    let root = tempfile::tempdir().unwrap();
    let ca = Ca::init(&root.path().join("ca")).unwrap();
    let dir = root.path().join("host");
    issue_server(&ca, &ServerRequest::new("h1"), &Output::new(&dir)).unwrap();
    // The second bundle reuses the cacert.pem the first one wrote.
    issue_client(&ca, &ClientRequest::new("CN=h1-client"), &Output::new(&dir)).unwrap();

    let report = passes(&dir);

    assert_eq!(report.layouts, [Layout::Server, Layout::Client]);
}

#[test]
fn a_bundle_with_another_ca_trusts_both_and_survives_reissuing() {
    let root = tempfile::tempdir().unwrap();
    let ours = Ca::init(&root.path().join("ours")).unwrap();
    let theirs = Ca::init(&root.path().join("theirs")).unwrap();
    let dir = root.path().join("client");
    let out = Output {
        also_trust_pem: theirs.cert_pem().to_string(),
        ..Output::new(&dir)
    };
    issue_client(&ours, &ClientRequest::new("CN=alice"), &out).unwrap();
    let bundle = fs::read_to_string(dir.join("cacert.pem")).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);

    let renewed = Output {
        replace: true,
        ..Output::new(&dir)
    };
    issue_client(&ours, &ClientRequest::new("CN=alice"), &renewed).unwrap();

    assert_eq!(fs::read_to_string(dir.join("cacert.pem")).unwrap(), bundle);
    let report = passes(&dir);
    assert!(
        report.findings.iter().any(|f| f.about == "cacert.pem #2"),
        "{report}"
    );
}

#[test]
fn a_cacert_file_that_does_not_trust_the_issuing_ca_is_not_overwritten_silently() {
    let root = tempfile::tempdir().unwrap();
    let ours = Ca::init(&root.path().join("ours")).unwrap();
    let theirs = Ca::init(&root.path().join("theirs")).unwrap();
    let dir = root.path().join("client");
    issue_client(&theirs, &ClientRequest::new("CN=alice"), &Output::new(&dir)).unwrap();
    fs::remove_file(dir.join("clientcert.pem")).unwrap();
    fs::remove_file(dir.join("clientkey.pem")).unwrap();

    let err = issue_client(&ours, &ClientRequest::new("CN=alice"), &Output::new(&dir))
        .unwrap_err()
        .to_string();

    assert!(
        err.contains("does not trust this CA") && err.contains("--force"),
        "{err}"
    );
    assert!(
        !dir.join("clientkey.pem").exists(),
        "nothing written on refusal"
    );
}

#[test]
fn a_ca_loaded_back_issues_certificates_that_chain_to_it() {
    let root = tempfile::tempdir().unwrap();
    let created = Ca::init(&root.path().join("ca")).unwrap();
    let loaded = Ca::load(&root.path().join("ca")).unwrap();
    assert_eq!(loaded.cert_der(), created.cert_der());
    assert_eq!(loaded.subject(), created.subject());

    let dir = root.path().join("srv");
    issue_server(&loaded, &ServerRequest::new("h1"), &Output::new(&dir)).unwrap();

    passes(&dir);
}
