//! The development PKI `virtgate up` relies on: made once, then reused byte for byte.

use std::collections::BTreeMap;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use virtgate_pki::{bootstrap_dev, check, CheckOptions, DevPki, PkiError};

/// Every file under `dir` with its contents, to compare two states of the tree.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.clone(), fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// `pki` as a later start reports it: the same files, nothing created.
fn first_with_nothing_created(pki: DevPki) -> DevPki {
    DevPki {
        created: Vec::new(),
        ..pki
    }
}

fn first_start(data: &Path) -> DevPki {
    bootstrap_dev(
        data,
        &["gw.example".to_string(), "gw".to_string()],
        &["10.0.0.9".parse().unwrap()],
    )
    .unwrap()
}

#[test]
fn first_start_creates_two_cas_a_server_a_backend_identity_and_an_admin_bundle() {
    let data = tempfile::tempdir().unwrap();
    let pki = first_start(data.path());

    assert_eq!(pki.root, data.path().join("pki"));
    assert_eq!(pki.users_ca.dir, pki.root.join("ca"));
    assert_eq!(pki.backend_ca.dir, pki.root.join("backend-ca"));
    assert_eq!(pki.server.dir, pki.root.join("server"));
    assert_eq!(pki.backend.dir, pki.root.join("backend"));
    assert_eq!(pki.admin.dir, pki.root.join("admin"));
    assert_eq!(
        pki.created,
        [
            &pki.users_ca.dir,
            &pki.server.dir,
            &pki.backend_ca.dir,
            &pki.backend.dir,
            &pki.admin.dir
        ]
        .map(|d| d.as_path())
    );
    assert!(pki.not_covered.is_empty());
    assert!(!pki.backend_reissued);
    for key in [
        &pki.users_ca.key,
        &pki.backend_ca.key,
        &pki.server.key,
        &pki.backend.key,
        &pki.admin.key,
    ] {
        assert_eq!(mode(key), 0o600, "{}", key.display());
    }

    let server = check(
        &pki.server.dir,
        &CheckOptions {
            hostnames: [
                "gw.example",
                "gw",
                "localhost",
                "10.0.0.9",
                "127.0.0.1",
                "::1",
            ]
            .map(String::from)
            .to_vec(),
            ..CheckOptions::default()
        },
    )
    .unwrap();
    assert!(server.passed(), "{server}");
    for dir in [
        &pki.users_ca.dir,
        &pki.backend_ca.dir,
        &pki.backend.dir,
        &pki.admin.dir,
    ] {
        let report = check(dir, &CheckOptions::default()).unwrap();
        assert!(report.passed(), "{report}");
    }

    let subject = |path: &Path| {
        let text = fs::read_to_string(path).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes()).unwrap();
        pem.parse_x509().unwrap().subject().to_string()
    };
    assert_eq!(
        subject(&pki.backend.cert),
        "O=virtgate, CN=virtgate-gateway"
    );
    assert_eq!(subject(&pki.admin.cert), "O=virtgate, CN=admin");
    assert_eq!(
        pki.admin.pkipath_query(),
        format!("pkipath={}", pki.admin.dir.display())
    );
}

#[test]
fn later_starts_reuse_everything_without_regenerating_anything() {
    let data = tempfile::tempdir().unwrap();
    let first = first_start(data.path());
    let before = snapshot(&first.root);

    let again = first_start(data.path());

    assert!(again.created.is_empty(), "{:?}", again.created);
    assert!(!again.backend_reissued);
    assert_eq!(snapshot(&again.root), before, "no file may change on reuse");
    assert_eq!(again, first_with_nothing_created(first));
}

#[test]
fn a_missing_bundle_is_made_again_from_the_existing_ca() {
    let data = tempfile::tempdir().unwrap();
    let first = first_start(data.path());
    fs::remove_dir_all(&first.admin.dir).unwrap();
    let kept = snapshot(&first.root);

    let again = first_start(data.path());

    assert_eq!(again.created, [again.admin.dir.as_path()]);
    let now = snapshot(&again.root);
    for (path, bytes) in &kept {
        assert_eq!(now.get(path), Some(bytes), "{} changed", path.display());
    }
    let report = check(&again.admin.dir, &CheckOptions::default()).unwrap();
    assert!(
        report.passed(),
        "the new bundle chains to the old CA: {report}"
    );
}

#[test]
fn names_the_reused_server_certificate_does_not_cover_are_reported_not_fixed() {
    let data = tempfile::tempdir().unwrap();
    let first = first_start(data.path());
    let cert = fs::read(&first.server.cert).unwrap();
    let new_ip: IpAddr = "10.0.0.10".parse().unwrap();

    let again =
        bootstrap_dev(data.path(), &["gw.example".into(), "gw2".into()], &[new_ip]).unwrap();

    assert_eq!(again.not_covered, ["gw2", "10.0.0.10"]);
    assert_eq!(fs::read(&again.server.cert).unwrap(), cert);
}

#[test]
fn half_a_key_pair_or_a_lost_ca_stops_the_start_instead_of_being_papered_over() {
    let data = tempfile::tempdir().unwrap();
    let first = first_start(data.path());
    fs::remove_file(&first.backend.key).unwrap();
    let err = bootstrap_dev(data.path(), &[], &[]).unwrap_err();
    assert!(matches!(err, PkiError::IncompleteDevPki { .. }), "{err}");
    assert!(err.to_string().contains("delete"), "{err}");

    let data = tempfile::tempdir().unwrap();
    let first = first_start(data.path());
    fs::remove_dir_all(&first.users_ca.dir).unwrap();
    let err = bootstrap_dev(data.path(), &[], &[]).unwrap_err();
    assert!(err.to_string().contains("start over"), "{err}");
}
