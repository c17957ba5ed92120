//! An operator's day with a real libvirtd: renewing a pinned host's certificate does not lock it
//! out (the gateway has the broker look again at once, the new key shows as `changed` with both
//! pins, approving it works at once — in `up` and for a proxy following the broker), a renewal
//! from a trusted CA re-pins by itself, and client commands find the running broker from any
//! directory.
#![allow(clippy::disallowed_types)] // synchronous test code: std's clock is the right one

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::gateway::{identity, text, virsh, Gateway};
use common::VIRTGATE;
use virtgate_testlab::libvirtd::{Libvirtd, LibvirtdOptions};
use virtgate_testlab::pki::ServerCertSpec;

const RULES: &str = r#"
[[proxy.rules]]
identity = "C=GB,O=virtgate-test,CN=alice"
hosts = ["*"]
mode = "rw"
"#;

/// The broker probes every 10 minutes: anything that happens within seconds is the gateway's
/// doing, not the schedule's.
const TEN_MINUTES: &str = "probe_interval = \"10m\"";

fn h1(port: u16) -> String {
    host("h1", port)
}

fn host(name: &str, port: u16) -> String {
    format!("{}{RULES}", common::static_host(name, port))
}

fn cli(config: &std::path::Path, args: &[&str]) -> Output {
    Command::new(VIRTGATE)
        .args(["--config", config.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap()
}

/// Polls `hosts show h1 --json` until `done` holds for the host; panics after `limit`.
fn wait_host(
    config: &std::path::Path,
    limit: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_for(config, "h1", limit, done)
}

fn wait_for(
    config: &std::path::Path,
    name: &str,
    limit: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let out = cli(config, &["hosts", "show", name, "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        let detail: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if done(&detail["host"]) {
            return detail;
        }
        assert!(
            Instant::now() < deadline,
            "not within {limit:?}: {detail:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_renewed_pinned_host_shows_as_changed_at_once_and_its_new_key_is_approved_without_a_restart() {
    let mut libvirtd = Libvirtd::start(LibvirtdOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(dir.path(), &libvirtd, TEN_MINUTES, &h1(libvirtd.port()));
    gw.wait_trust("h1", "pending");
    gw.approve("h1");
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    let via = gw.uri("127.0.0.1", "h1", &alice);
    assert!(virsh(&via, &["list"]).status.success());
    let old = libvirtd.server_cert().spki_sha256_hex();

    // The host's certificate is renewed with a new key, as `pki issue --force` does.
    libvirtd
        .restart_with_server_cert(ServerCertSpec::localhost())
        .unwrap();
    let new = libvirtd.server_cert().spki_sha256_hex();
    let refused = virsh(&via, &["list"]);
    assert!(
        !refused.status.success() && text(&refused).contains("is not its approved pin"),
        "{}",
        text(&refused)
    );
    // The gateway's refusal made the broker probe h1 at once: `changed`, with both pins.
    let detail = wait_host(&gw.config, Duration::from_secs(10), |h| {
        h["trust"] == "changed"
    });
    assert_eq!(detail["host"]["pin"], old.as_str());
    assert_eq!(detail["host"]["presented_pin"], new.as_str());
    let shown = cli(&gw.config, &["hosts", "show", "h1"]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains(&format!("approved key   sha256:{old}"))
            && shown.contains(&format!("presented key  sha256:{new}")),
        "{shown}"
    );

    // Approving the new key in the kubeadm spelling works at once.
    let approved = cli(
        &gw.config,
        &["hosts", "approve", "h1", "--pin", &format!("sha256:{new}")],
    );
    assert!(approved.status.success(), "{}", text(&approved));
    let listed = virsh(&via, &["list"]);
    assert!(listed.status.success(), "{}", text(&listed));

    // A second renewal, approved straight away in certtool's spelling, before anything else
    // looked at the host: the approval probes it first.
    libvirtd
        .restart_with_server_cert(ServerCertSpec::localhost())
        .unwrap();
    let newer = libvirtd.server_cert().spki_sha256_base64();
    let approved = cli(
        &gw.config,
        &[
            "hosts",
            "approve",
            "h1",
            "--pin",
            &format!("pin-sha256:{newer}"),
        ],
    );
    assert!(approved.status.success(), "{}", text(&approved));
    let listed = virsh(&via, &["list"]);
    assert!(listed.status.success(), "{}", text(&listed));

    // Approving the same key again changes nothing and logs nothing.
    let pin = libvirtd.server_cert().spki_sha256_hex();
    let again = cli(&gw.config, &["hosts", "approve", "h1", "--pin", &pin]);
    assert!(again.status.success(), "{}", text(&again));
    let events = wait_host(&gw.config, Duration::from_secs(1), |_| true)["events"].clone();
    let approvals = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "approved" && e["detail"].as_str().unwrap().contains(&pin))
        .count();
    assert_eq!(approvals, 1, "{events:#}");
}

#[test]
fn a_proxy_following_the_broker_has_it_probe_a_renewed_host_and_sees_the_approval_at_once() {
    let mut libvirtd = Libvirtd::start(LibvirtdOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(dir.path(), &libvirtd, TEN_MINUTES, &h1(libvirtd.port()));
    gw.wait_trust("h1", "pending");
    gw.approve("h1");
    // A second gateway, `virtgate proxy`, following the broker of `up` over its HTTPS API with
    // the development CA of the API and the backend identity of the configuration.
    let port = common::free_port();
    let metrics_port = common::free_port();
    let broker = format!("https://{}", gw.api);
    let ca = common::gateway::up_api_ca(&gw.data_dir);
    let mut proxy_cmd = Command::new(VIRTGATE);
    proxy_cmd
        .args([
            "--config",
            gw.config.to_str().unwrap(),
            "proxy",
            "--broker",
            &broker,
        ])
        .args(["--broker-ca", ca.to_str().unwrap()])
        .args(["--gateway-listen", &format!("127.0.0.1:{port}")])
        .env(
            "VIRTGATE_PROXY__METRICS_LISTEN",
            format!("127.0.0.1:{metrics_port}"),
        )
        .env("RUST_LOG", "info");
    let mut proxy = virtgate_testlab::LabProcess::spawn(proxy_cmd).unwrap();
    proxy
        .wait_for_stderr("proxy started", Duration::from_secs(15))
        .unwrap_or_else(|_| panic!("{}", proxy.stderr_text()));
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    let via = format!(
        "test+tls://127.0.0.1:{port}/default?name=test://h1/default&pkipath={}",
        alice.pki.display()
    );
    let listed = virsh(&via, &["list"]);
    assert!(
        listed.status.success(),
        "{}\n{}",
        text(&listed),
        proxy.stderr_text()
    );

    libvirtd
        .restart_with_server_cert(ServerCertSpec::localhost())
        .unwrap();
    let new = libvirtd.server_cert().spki_sha256_hex();
    assert!(!virsh(&via, &["list"]).status.success());
    wait_host(&gw.config, Duration::from_secs(10), |h| {
        h["trust"] == "changed" && h["presented_pin"] == new.as_str()
    });
    let approved = cli(&gw.config, &["hosts", "approve", "h1", "--pin", &new]);
    assert!(approved.status.success(), "{}", text(&approved));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let listed = virsh(&via, &["list"]);
        if listed.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the approval did not reach the proxy: {}",
            text(&listed)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_renewal_signed_by_a_trusted_ca_keeps_working_and_re_pins_by_itself() {
    // The host is reached by a name its certificate covers, as trust through a CA requires.
    let mut libvirtd = Libvirtd::start(LibvirtdOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("hosts-ca.pem");
    std::fs::write(&ca, libvirtd.ca().cert_pem()).unwrap();
    let broker = format!(
        "probe_interval = \"10m\"\ntrusted_ca_files = [{:?}]",
        ca.display().to_string()
    );
    let gw = Gateway::start_with(
        dir.path(),
        &libvirtd,
        &broker,
        &host("localhost", libvirtd.port()),
    );
    gw.wait_trust("localhost", "trusted_ca");
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    let via = gw.uri("127.0.0.1", "localhost", &alice);
    assert!(virsh(&via, &["list"]).status.success());

    libvirtd
        .restart_with_server_cert(ServerCertSpec::localhost())
        .unwrap();
    let new = libvirtd.server_cert().spki_sha256_hex();
    let listed = virsh(&via, &["list"]);
    assert!(
        listed.status.success(),
        "a CA-signed renewal needs no approval: {}",
        text(&listed)
    );
    let probed = cli(&gw.config, &["hosts", "probe", "localhost", "--json"]);
    assert!(probed.status.success(), "{}", text(&probed));
    let host: serde_json::Value = serde_json::from_slice(&probed.stdout).unwrap();
    assert_eq!(host["trust"], "trusted_ca", "{host:#}");
    assert_eq!(host["pin"], new.as_str(), "re-pinned by itself: {host:#}");
    let detail = wait_for(&gw.config, "localhost", Duration::from_secs(1), |_| true);
    assert!(
        detail["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "cert_renewed"),
        "{detail:#}"
    );
}

/// `virtgate up` started in `cwd` with `config` and its own runtime directory; its banner.
fn up_in(
    cwd: &std::path::Path,
    config: &std::path::Path,
    runtime: &std::path::Path,
) -> (virtgate_testlab::LabProcess, Vec<String>) {
    let mut cmd = Command::new(VIRTGATE);
    cmd.args(["--config", config.to_str().unwrap(), "up"])
        .current_dir(cwd)
        .env("VIRTGATE_RUNTIME_DIR", runtime);
    let process = virtgate_testlab::LabProcess::spawn(cmd).unwrap();
    let lines: Vec<String> = process
        .lines_until(Instant::now() + Duration::from_secs(20), |l| {
            l.trim_start().starts_with("try")
        })
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert!(
        lines.iter().any(|l| l.trim_start().starts_with("try")),
        "{lines:#?}\n{}",
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
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
fn client_commands_find_the_running_broker_from_any_directory_and_nobody_shares_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let (workdir, elsewhere, runtime) = (
        dir.path().join("work"),
        dir.path().join("elsewhere"),
        dir.path().join("run"),
    );
    std::fs::create_dir_all(&workdir).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let (api, port) = (common::free_port(), common::free_port());
    let config = workdir.join("virtgate.toml");
    // The data directory is the default, relative one: ./virtgate-data of where `up` runs.
    std::fs::write(
        &config,
        format!("[broker]\nlisten = \"127.0.0.1:{api}\"\ndiscovery = false\n[proxy]\nlisten = [\"127.0.0.1:{port}\"]\n"),
    )
    .unwrap();
    let (mut up, lines) = up_in(&workdir, &config, &runtime);
    let data = workdir.join("virtgate-data");
    assert_eq!(field(&lines, "data directory"), data.display().to_string());
    assert!(
        field(&lines, "admin token").starts_with(&data.join("admin.token").display().to_string()),
        "{lines:#?}"
    );
    assert_eq!(field(&lines, "config file"), config.display().to_string());
    assert!(field(&lines, "connect with").contains(&format!(":{port}/")));
    assert!(field(&lines, "LAN discovery").contains("[[broker.hosts]]"));
    assert_eq!(
        field(&lines, "try"),
        "virtgate hosts   |   virtgate certs --expiring 30d"
    );

    // From another directory, without --config: the runtime file leads to the broker, its CA
    // and its admin token.
    let client = |args: &[&str]| {
        Command::new(VIRTGATE)
            .args(args)
            .current_dir(&elsewhere)
            .env("VIRTGATE_RUNTIME_DIR", &runtime)
            .env_remove("VIRTGATE_CONFIG")
            .output()
            .unwrap()
    };
    let hosts = client(&["hosts"]);
    assert!(hosts.status.success(), "{}", text(&hosts));
    assert!(
        text(&hosts).contains("virtgate advertise"),
        "{}",
        text(&hosts)
    );
    let certs = client(&["certs", "--json"]);
    assert!(certs.status.success(), "{}", text(&certs));
    let rows: serde_json::Value = serde_json::from_slice(&certs.stdout).unwrap();
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .any(|r| r["host"] == "virtgate" && r["role"] == "proxy_server"),
        "the gateway's own certificates are listed: {rows:#}"
    );
    let approve = client(&["hosts", "approve", "nosuch", "--pin", &"ab".repeat(32)]);
    assert_eq!(approve.status.code(), Some(1), "{}", text(&approve));
    assert!(
        text(&approve).contains("no host named \"nosuch\" in the inventory; `virtgate hosts`"),
        "the admin token was found, the broker answered: {}",
        text(&approve)
    );
    let issued = client(&[
        "pki",
        "issue",
        "client",
        "--dn",
        "O=Example,CN=bob",
        "--out",
        "bob",
    ]);
    assert!(issued.status.success(), "{}", text(&issued));
    let users_ca = std::fs::read_to_string(data.join("pki/ca/cacert.pem")).unwrap();
    assert_eq!(
        std::fs::read_to_string(elsewhere.join("bob/cacert.pem")).unwrap(),
        users_ca,
        "issued from the running gateway's users' CA, not a new one"
    );

    // A second `up` on the same data directory is refused, naming the first.
    let second = Command::new(VIRTGATE)
        .args(["--config", config.to_str().unwrap(), "up"])
        .current_dir(&workdir)
        .env("VIRTGATE_RUNTIME_DIR", &runtime)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1), "{}", text(&second));
    assert!(
        text(&second).contains(&format!("is in use by another virtgate (pid {}", up.pid())),
        "{}",
        text(&second)
    );

    up.stop(Duration::from_secs(5));
    assert!(
        !runtime.join("broker.json").exists(),
        "the runtime file goes with the broker"
    );
    assert!(
        up.stderr_text().contains("stopped"),
        "stopping is logged: {}",
        up.stderr_text()
    );
    // Without a running broker, a relative data directory is named with the working directory.
    // (The default API address is pointed at a free port: other tests run `up` on the defaults
    // at the same time.)
    let lost = Command::new(VIRTGATE)
        .args(["hosts", "approve", "h1", "--pin", &"ab".repeat(32)])
        .current_dir(&elsewhere)
        .env("VIRTGATE_RUNTIME_DIR", &runtime)
        .env_remove("VIRTGATE_CONFIG")
        .env(
            "VIRTGATE_BROKER__LISTEN",
            format!("127.0.0.1:{}", common::free_port()),
        )
        .output()
        .unwrap();
    assert!(
        text(&lost).contains(&format!("the working directory is {}", elsewhere.display())),
        "{}",
        text(&lost)
    );
}

/// The newcomer's path, as README and docs/pki.md tell it: `virtgate up` on defaults, a real
/// libvirtd set up as the banner's *host setup* says (the backend CA appended to its CA file, the
/// gateway's DN allowed), listed under `[[broker.hosts]]`, approved at a terminal after a look
/// at its key, reached with virsh and the admin bundle; then its certificate is renewed, and
/// approving the new key is all it takes.
#[test]
fn the_newcomer_path_up_a_host_from_the_docs_approval_virsh_and_a_renewal_needs_no_restart() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("run");
    let (api, port) = (common::free_port(), common::free_port());
    let config = dir.path().join("virtgate.toml");
    let base = format!(
        "[broker]\nlisten = \"127.0.0.1:{api}\"\ndiscovery = false\n[proxy]\nlisten = [\"127.0.0.1:{port}\"]\n"
    );
    std::fs::write(&config, &base).unwrap();
    let (mut first, lines) = up_in(dir.path(), &config, &runtime);
    let backend_ca = dir.path().join("virtgate-data/pki/backend-ca/cacert.pem");
    assert!(
        field(&lines, "host setup").contains(&backend_ca.display().to_string()),
        "{lines:#?}"
    );
    first.stop(Duration::from_secs(5));

    let mut libvirtd = common::libvirtd_set_up_for(&backend_ca);
    std::fs::write(
        &config,
        format!("{base}{}", common::static_host("h1", libvirtd.port())),
    )
    .unwrap();
    let (_up, lines) = up_in(dir.path(), &config, &runtime);
    let connect = field(&lines, "connect with");
    let uri = connect
        .split('\'')
        .nth(1)
        .unwrap()
        .replace("qemu+tls://", "test+tls://")
        .replace(
            "/system?name=qemu://HOST/system",
            "/default?name=test://h1/default",
        );
    // The banner names this machine; the test reaches it as localhost, which the gateway's
    // development certificate covers too.
    let authority = uri["test+tls://".len()..]
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let uri = uri.replacen(&authority, &format!("localhost:{port}"), 1);
    let client = |args: &[&str]| {
        Command::new(VIRTGATE)
            .args(args)
            .env("VIRTGATE_RUNTIME_DIR", &runtime)
            .output()
            .unwrap()
    };
    wait_pending(&client);
    // At a terminal, as the README says: the key is shown with its certificate, and one "y"
    // approves it.
    let pin = libvirtd.server_cert().spki_sha256_hex();
    let session = at_a_terminal(&runtime, "hosts approve h1", "y\n");
    for shown in [
        format!("host h1 presents key sha256:{pin}"),
        "subject      O=virtgate-test,CN=localhost".to_string(),
        "SANs         DNS:localhost".to_string(),
        "approve this key for h1? [y/N]".to_string(),
        format!("approved: h1 is now pinned with key sha256:{pin}"),
    ] {
        assert!(session.contains(&shown), "{shown:?} in {session}");
    }
    let listed = virsh(&uri, &["list", "--all"]);
    assert!(listed.status.success(), "{uri}: {}", text(&listed));

    libvirtd
        .restart_with_server_cert(ServerCertSpec::localhost())
        .unwrap();
    assert!(!virsh(&uri, &["list"]).status.success());
    let approved = common::approve_shown_pin(client, "h1");
    assert!(approved.status.success(), "{}", text(&approved));
    let listed = virsh(&uri, &["list", "--all"]);
    assert!(listed.status.success(), "{}", text(&listed));
}

/// Waits until `virtgate hosts` lists h1 as pending.
fn wait_pending(client: &impl Fn(&[&str]) -> Output) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = client(&["hosts"]);
        if String::from_utf8_lossy(&out.stdout).contains("pending") {
            return;
        }
        assert!(Instant::now() < deadline, "{}", text(&out));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `virtgate ARGS` on a terminal (util-linux `script`), typing `input`; what it showed.
fn at_a_terminal(runtime: &std::path::Path, args: &str, input: &str) -> String {
    use std::io::Write;
    let mut session = Command::new("script")
        .args(["-qec", &format!("{VIRTGATE} {args}"), "/dev/null"])
        .env("VIRTGATE_RUNTIME_DIR", runtime)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs");
    session
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = session.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).replace('\r', "")
}
