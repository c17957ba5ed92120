//! `virtgate up` on embedded defaults: no certificate configured anywhere. The first start
//! generates a development PKI and prints how to connect; later starts reuse it; the printed
//! admin bundle reaches a real libvirtd through the gateway.
#![allow(clippy::disallowed_types)] // synchronous test code: std's clock is the right one

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::gateway::{text, virsh};
use common::{free_port, VIRTGATE};
use virtgate_testlab::libvirtd::{Libvirtd, LibvirtdOptions};
use virtgate_testlab::LabProcess;

fn up(config: &std::path::Path) -> (LabProcess, Vec<String>) {
    let mut cmd = Command::new(VIRTGATE);
    cmd.args(["--config", config.to_str().unwrap(), "up"]);
    let process = LabProcess::spawn(cmd).unwrap();
    let lines = process.lines_until(std::time::Instant::now() + Duration::from_secs(20), |l| {
        l.trim_start().starts_with("try")
    });
    let lines: Vec<String> = lines.into_iter().map(|(_, l)| l).collect();
    assert!(
        lines.iter().any(|l| l.contains("try")),
        "up did not print its summary: {lines:?}\n{}",
        process.stderr_text()
    );
    (process, lines)
}

fn field<'a>(lines: &'a [String], label: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} line in {lines:#?}"))
        .trim()
}

#[test]
fn up_generates_a_dev_pki_once_and_its_admin_bundle_reaches_a_host() {
    let dir = tempfile::tempdir().unwrap();
    let (api, port) = (free_port(), free_port());
    let base = format!(
        "[broker]\ndata_dir = {:?}\nlisten = \"127.0.0.1:{api}\"\ndiscovery = false\nfirst_sight = \"tofu\"\n[proxy]\nlisten = [\"127.0.0.1:{port}\"]\n",
        dir.path().join("data").display().to_string()
    );
    let config = dir.path().join("virtgate.toml");
    std::fs::write(&config, &base).unwrap();

    let (mut first, lines) = up(&config);
    assert!(
        field(&lines, "dev PKI").ends_with("(created)"),
        "{lines:#?}"
    );
    let admin = PathBuf::from(field(&lines, "admin bundle").split(' ').next().unwrap());
    for file in ["cacert.pem", "clientcert.pem", "clientkey.pem"] {
        assert!(admin.join(file).is_file(), "{file} in {}", admin.display());
    }
    assert_eq!(
        std::fs::metadata(admin.join("clientkey.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o077,
        0,
        "key is 0600"
    );
    let connect = field(&lines, "connect with");
    assert!(
        connect.contains(&format!("pkipath={}", admin.display()))
            && connect.contains(&format!(":{port}/")),
        "{connect}"
    );
    let ca = std::fs::read_to_string(dir.path().join("data/pki/ca/cacert.pem")).unwrap();
    first.stop(Duration::from_secs(5));

    // A host that trusts the development CA, added to the configuration.
    let libvirtd = Libvirtd::start(LibvirtdOptions {
        extra_client_cas: vec![ca],
        ..Default::default()
    })
    .unwrap();
    std::fs::write(
        &config,
        format!(
            "{base}[[broker.hosts]]\nname = \"h1\"\naddresses = [\"127.0.0.1\"]\nport = {}\n",
            libvirtd.port()
        ),
    )
    .unwrap();
    let (_second, lines) = up(&config);
    assert!(field(&lines, "dev PKI").ends_with("(reused)"), "{lines:#?}");

    let uri = format!(
        "test+tls://localhost:{port}/default?name=test://h1/default&pkipath={}",
        admin.display()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let listed = loop {
        let out = virsh(&uri, &["list", "--all"]);
        if out.status.success() || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200)); // the broker's first probe pins the host
    };
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(String::from_utf8_lossy(&listed.stdout).contains("test"));
}
