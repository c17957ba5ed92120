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
    // Hosts trust the backend CA, not the users' CA that signed the admin bundle, and allow
    // only the gateway's DN: the banner says which file and which DN.
    let setup = field(&lines, "host setup");
    let backend_ca = dir.path().join("data/pki/backend-ca/cacert.pem");
    assert!(
        setup.contains(&backend_ca.display().to_string())
            && setup.contains(&format!(
                "tls_allowed_dn_list = [\"{}\"]",
                virtgate_pki::BACKEND_DN
            )),
        "{setup}"
    );
    first.stop(Duration::from_secs(5));

    // A host set up as the banner says, added to the configuration.
    let libvirtd = common::libvirtd_set_up_for(&backend_ca);
    std::fs::write(
        &config,
        format!("{base}{}", common::static_host("h1", libvirtd.port())),
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

/// What `up` created before the users' and the backend CA were split: one CA for the server
/// certificate, the backend identity and the admin bundle.
fn single_ca_data_dir(data: &std::path::Path) {
    use virtgate_pki::{issue_client, issue_server, Ca, CaOptions, ClientRequest, Output};
    let root = data.join("pki");
    let ca = Ca::init_with(
        &root.join("ca"),
        &CaOptions {
            organization: "virtgate-dev".into(),
            ..CaOptions::default()
        },
    )
    .unwrap();
    let mut server = virtgate_pki::ServerRequest::new("localhost");
    server.ips = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
    issue_server(&ca, &server, &Output::new(root.join("server"))).unwrap();
    let admin = ClientRequest::new(virtgate_pki::ADMIN_DN);
    issue_client(&ca, &admin, &Output::new(root.join("admin"))).unwrap();
    // Today's `issue_client` refuses the backend identity from a users' CA: written by hand.
    let backend = root.join("backend");
    std::fs::create_dir(&backend).unwrap();
    let issued = ca
        .sign_client(&ClientRequest::new(virtgate_pki::BACKEND_DN))
        .unwrap();
    std::fs::write(backend.join("cacert.pem"), ca.cert_pem()).unwrap();
    std::fs::write(backend.join("clientcert.pem"), &issued.cert_pem).unwrap();
    std::fs::write(backend.join("clientkey.pem"), &issued.key_pem).unwrap();
    std::fs::set_permissions(
        backend.join("clientkey.pem"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
}

#[test]
fn an_old_single_ca_data_directory_is_split_once_and_the_banner_says_what_hosts_must_do() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    single_ca_data_dir(&data);
    let admin_cert = std::fs::read(data.join("pki/admin/clientcert.pem")).unwrap();
    let (api, port) = (free_port(), free_port());
    let config = dir.path().join("virtgate.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\ndata_dir = {:?}\nlisten = \"127.0.0.1:{api}\"\ndiscovery = false\n[proxy]\nlisten = [\"127.0.0.1:{port}\"]\n",
            data.display().to_string()
        ),
    )
    .unwrap();

    let (mut first, lines) = up(&config);
    let changed: Vec<&String> = lines.iter().filter(|l| l.contains("CHANGED")).collect();
    let text = lines.join("\n");
    let backend_ca = data.join("pki/backend-ca/cacert.pem");
    let users_ca = data.join("pki/ca/cacert.pem");
    assert!(
        !changed.is_empty()
            && text.contains(&format!(
                "re-issued from a new backend CA, {}",
                backend_ca.display()
            ))
            && text.contains(&format!(
                "remove {} from libvirtd's ca_file",
                users_ca.display()
            ))
            && text.contains(virtgate_pki::BACKEND_DN),
        "{text}"
    );
    assert_eq!(
        std::fs::read(data.join("pki/admin/clientcert.pem")).unwrap(),
        admin_cert,
        "the admin bundle keeps working"
    );
    first.stop(Duration::from_secs(5));

    let (_second, lines) = up(&config);
    assert!(
        !lines.iter().any(|l| l.contains("CHANGED")),
        "said once: {lines:#?}"
    );
    assert!(field(&lines, "host setup").contains(&backend_ca.display().to_string()));
}

#[test]
fn up_serves_its_api_over_https_with_a_development_certificate_it_reuses() {
    let dir = tempfile::tempdir().unwrap();
    let (api, port) = (free_port(), free_port());
    let data = dir.path().join("data");
    let write_config = |listen: &str| {
        let config = dir.path().join("virtgate.toml");
        std::fs::write(
            &config,
            format!(
                "[broker]\ndata_dir = {:?}\nlisten = \"{listen}:{api}\"\ndiscovery = false\n[proxy]\nlisten = [\"127.0.0.1:{port}\"]\n",
                data.display().to_string()
            ),
        )
        .unwrap();
        config
    };
    let config = write_config("127.0.0.1");
    let (mut first, lines) = up(&config);
    assert_eq!(
        field(&lines, "inventory API"),
        format!("https://127.0.0.1:{api}/v1/hosts")
    );
    assert!(
        field(&lines, "API certificate").contains("(created;"),
        "{lines:#?}"
    );
    let broker_dir = data.join("pki/broker");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&broker_dir), 0o700);
    assert_eq!(mode(&broker_dir.join("serverkey.pem")), 0o600);
    let ca = broker_dir.join("cacert.pem");
    let cert = std::fs::read(broker_dir.join("servercert.pem")).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{api}").parse().unwrap();
    let tls = common::tls_client(&ca, None);
    let (status, body) = common::https(addr, &tls, "GET", "/v1/hosts", None, None).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        !common::http(addr, "GET", "/metrics", None, None).is_ok_and(|(s, _)| s == 200),
        "no plain HTTP once the API has a certificate"
    );
    // The CLI finds the development CA of the local broker by itself, and refuses another CA.
    let cli = |args: &[&str]| {
        Command::new(VIRTGATE)
            .args(["--config", config.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let hosts = cli(&["hosts"]);
    assert!(hosts.status.success(), "{}", text(&hosts));
    let stranger = virtgate_testlab::pki::Ca::new("stranger").unwrap();
    let stranger_file = dir.path().join("stranger.pem");
    std::fs::write(&stranger_file, stranger.cert_pem()).unwrap();
    let refused = cli(&[
        "certs",
        "--broker",
        &format!("https://127.0.0.1:{api}"),
        "--broker-ca",
        stranger_file.to_str().unwrap(),
    ]);
    assert!(
        !refused.status.success() && text(&refused).contains("TLS with the broker"),
        "{}",
        text(&refused)
    );
    first.stop(Duration::from_secs(5));

    // Beyond loopback: the same certificate, and reads need a credential; the development
    // backend identity (what a separate proxy would present) is one.
    let config = write_config("0.0.0.0");
    let (_second, lines) = up(&config);
    assert!(
        field(&lines, "API certificate").contains("(reused;"),
        "{lines:#?}"
    );
    assert_eq!(
        std::fs::read(broker_dir.join("servercert.pem")).unwrap(),
        cert
    );
    let (status, _) = common::https(addr, &tls, "GET", "/v1/hosts", None, None).unwrap();
    assert_eq!(status, 401);
    let backend = data.join("pki/backend");
    let proxy_tls = common::tls_client(
        &ca,
        Some((
            &backend.join("clientcert.pem"),
            &backend.join("clientkey.pem"),
        )),
    );
    let (status, body) = common::https(addr, &proxy_tls, "GET", "/v1/hosts", None, None).unwrap();
    assert_eq!(status, 200, "{body}");
    let hosts = cli(&["hosts"]);
    assert!(hosts.status.success(), "{}", text(&hosts));
}
