//! The throwaway PKI, checked with GnuTLS's certtool (the library libvirt itself uses).

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use virtgate_testlab::pki::{
    ca_bundle, write_ca_bundle, Ca, ClientCertSpec, IssuedCert, KeyUsageProfile, ServerCertSpec,
};
use virtgate_testlab::require_root_and_tools;
use virtgate_testlab::time::Duration;

fn certtool(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new("certtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run certtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn info(cert: &IssuedCert, dir: &Path) -> String {
    let path = dir.join("info.pem");
    std::fs::write(&path, &cert.cert_pem).unwrap();
    let (ok, text) = certtool(&["-i", "--infile", "info.pem"], dir);
    assert!(ok, "{text}");
    text
}

fn verify(ca_pem: &str, cert: &IssuedCert, dir: &Path) -> (bool, String) {
    std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
    std::fs::write(dir.join("leaf.pem"), &cert.cert_pem).unwrap();
    certtool(
        &[
            "--verify",
            "--load-ca-certificate",
            "ca.pem",
            "--infile",
            "leaf.pem",
        ],
        dir,
    )
}

#[test]
fn server_certificates_carry_what_libvirt_checks() {
    require_root_and_tools(&["certtool"]);
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA").unwrap();
    let server = ca.issue_server(&ServerCertSpec::localhost()).unwrap();
    let text = info(&server, dir.path());
    assert!(text.contains("Key Usage (critical):"), "{text}");
    assert!(text.contains("Digital signature."), "{text}");
    assert!(text.contains("Key encipherment."), "{text}");
    assert!(text.contains("TLS WWW Server."), "{text}");
    assert!(text.contains("DNSname: localhost"), "{text}");
    assert!(text.contains("IPAddress: 127.0.0.1"), "{text}");
    assert!(text.contains("IPAddress: ::1"), "{text}");
    assert!(
        text.contains("Subject: CN=localhost,O=virtgate-test"),
        "{text}"
    );
    assert!(text.contains("EC/ECDSA"), "{text}");
    // gnutls's key ID is the SHA-256 of the SubjectPublicKeyInfo DER: the pin we expose.
    assert!(
        text.contains(&format!("sha256:{}", server.spki_sha256_hex())),
        "{text}\nwant sha256:{}",
        server.spki_sha256_hex()
    );
    let (ok, out) = verify(ca.cert_pem(), &server, dir.path());
    assert!(ok, "{out}");

    let ds_only = ca
        .issue_server(
            &ServerCertSpec::localhost().with_key_usage(KeyUsageProfile::DigitalSignatureOnly),
        )
        .unwrap();
    let text = info(&ds_only, dir.path());
    assert!(text.contains("Digital signature.") && !text.contains("Key encipherment."));
}

#[test]
fn special_server_certificates() {
    require_root_and_tools(&["certtool"]);
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA").unwrap();

    let cn_only = ca
        .issue_server(&ServerCertSpec::cn_only("legacy-host"))
        .unwrap();
    let text = info(&cn_only, dir.path());
    assert!(!text.contains("Subject Alternative Name"), "{text}");
    assert!(text.contains("CN=legacy-host"), "{text}");

    let v4: IpAddr = "127.0.0.1".parse().unwrap();
    let no_v4 = ca
        .issue_server(&ServerCertSpec::localhost().without_ip(v4))
        .unwrap();
    let text = info(&no_v4, dir.path());
    assert!(!text.contains("IPAddress: 127.0.0.1") && text.contains("IPAddress: ::1"));

    let expired = ca
        .issue_server(&ServerCertSpec::localhost().expired())
        .unwrap();
    let (ok, out) = verify(ca.cert_pem(), &expired, dir.path());
    assert!(!ok && out.contains("expired"), "{out}");

    let soon = ca
        .issue_server(&ServerCertSpec::localhost().expiring_in(Duration::days(10)))
        .unwrap();
    let (ok, out) = verify(ca.cert_pem(), &soon, dir.path());
    assert!(ok, "{out}");
    let text = info(&soon, dir.path());
    let year = (time::OffsetDateTime::now_utc() + Duration::days(10)).year();
    assert!(text.contains("Not After: ") && text.contains(&year.to_string()));
}

#[test]
fn client_certificates_files_and_bundles() {
    require_root_and_tools(&["certtool"]);
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA").unwrap();
    let other = Ca::new("other CA").unwrap();
    let alice = ca
        .issue_client(&ClientCertSpec::new("C=GB,O=virtgate-test,CN=alice"))
        .unwrap();
    let text = info(&alice, dir.path());
    assert!(
        text.contains("Subject: CN=alice,O=virtgate-test,C=GB"),
        "{text}"
    );
    assert!(text.contains("TLS WWW Client."), "{text}");
    assert!(text.contains("Key encipherment."), "{text}");

    let pki = dir.path().join("pki");
    alice
        .write_client_files(&pki, &ca_bundle(&[&ca, &other]))
        .unwrap();
    let mode = |name: &str| {
        std::fs::metadata(pki.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("clientkey.pem"), 0o600);
    assert_eq!(mode("clientcert.pem"), 0o644);
    assert!(std::fs::read_to_string(pki.join("clientkey.pem"))
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----"));

    // A bundle trusts leaves of every CA in it; a single CA does not trust the other's leaves.
    let bob = other
        .issue_client(&ClientCertSpec::new("O=virtgate-test,CN=bob"))
        .unwrap();
    write_ca_bundle(&dir.path().join("bundle.pem"), &[&ca, &other]).unwrap();
    let bundle = std::fs::read_to_string(dir.path().join("bundle.pem")).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(verify(&bundle, &alice, dir.path()).0);
    assert!(verify(&bundle, &bob, dir.path()).0);
    assert!(!verify(ca.cert_pem(), &bob, dir.path()).0);

    let server = ca.issue_server(&ServerCertSpec::localhost()).unwrap();
    server.write_server_files(&pki, ca.cert_pem()).unwrap();
    assert_eq!(mode("serverkey.pem"), 0o600);
    assert_ne!(server.spki_sha256, alice.spki_sha256);
    assert_eq!(server.spki_sha256_base64().len(), 44);
}
