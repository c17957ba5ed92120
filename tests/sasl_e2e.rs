//! Passwords both ways with real peers: real virsh and python3-libvirt log in to the gateway
//! with a SCRAM password (auth file, non-tty stdin, `openAuth`), and the gateway logs in to a
//! real libvirtd configured with `auth_tls = "sasl"` and cyrus-sasl SCRAM-SHA-256 (sasldb).
//! Every refusal also looks at the host: a TCP tap counts the connections it is offered.
#![allow(clippy::disallowed_types)] // synchronous test code: std's clock is the right one

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::gateway::{broker_alone, identity, text, virsh, Gateway};
use common::tap::Tap;
use common::{sample, VIRTGATE};
use virtgate_testlab::libvirtd::{Libvirtd, LibvirtdOptions};

const ALICE_PASSWORD: &str = "correct horse battery";
const CAROL_PASSWORD: &str = "carol has no rule";
const HOST_PASSWORD: &str = "nova-on-the-host-1";

fn host_toml(port: u16) -> String {
    format!("[[broker.hosts]]\nname = \"h1\"\naddresses = [\"127.0.0.1\"]\nport = {port}\n")
}

/// `virtgate --config CFG ARGS…` with `stdin` piped in.
fn cli(gw: &Gateway, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(VIRTGATE)
        .args(["--config", gw.config.to_str().unwrap()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A libvirt auth file of its own (`<dir>/auth-<label>.conf`, 0600) for `user` / `password`.
fn auth_file(dir: &Path, label: &str, user: &str, password: &str) -> PathBuf {
    let path = dir.join(format!("auth-{label}.conf"));
    virtgate_testlab::pki::write_file(
        &path,
        &format!(
            "[credentials-t]\nauthname={user}\npassword={password}\n\n[auth-libvirt-default]\ncredentials=t\n"
        ),
        0o600,
    )
    .unwrap();
    path
}

/// A libvirt pkipath with only the CA: the client presents no certificate.
fn no_certificate_pki(dir: &Path, libvirtd: &Libvirtd) -> PathBuf {
    let pki = dir.join("pki-none");
    std::fs::create_dir_all(&pki).unwrap();
    std::fs::write(pki.join("cacert.pem"), libvirtd.ca().cert_pem()).unwrap();
    pki
}

fn uri(gw: &Gateway, pki: &Path) -> String {
    format!(
        "test+tls://127.0.0.1:{}/default?name=test://h1/default&pkipath={}",
        gw.port,
        pki.display()
    )
}

/// virsh with `LIBVIRT_AUTH_FILE` (or none), stdin from `stdin` (never a terminal).
fn virsh_login(uri: &str, auth_file: Option<&Path>, stdin: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.args(["30", "/usr/bin/virsh", "-c", uri])
        .args(args)
        .env_remove("LIBVIRT_DEFAULT_URI")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match auth_file {
        Some(f) => cmd.env("LIBVIRT_AUTH_FILE", f),
        None => cmd.env_remove("LIBVIRT_AUTH_FILE"),
    };
    let mut child = cmd.spawn().unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

/// `virtgate users add NAME` at a terminal (a pseudo-terminal from python's `pty`): answers both
/// password prompts and prints everything the terminal showed.
const PY_PTY_ADD: &str = r#"
import os, pty, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1], "--config", sys.argv[2], "users", "add", sys.argv[3]])
seen = b""
def until(text):
    global seen
    deadline = time.time() + 20
    while text not in seen and time.time() < deadline:
        try:
            seen += os.read(fd, 1024)
        except OSError:
            break
until(b"password for")
os.write(fd, os.environ["PASSWORD"].encode() + b"\n")
until(b"(again): ")
os.write(fd, os.environ["PASSWORD"].encode() + b"\n")
until(b"added:")
_, status = os.waitpid(pid, 0)
try:
    while True:
        chunk = os.read(fd, 1024)
        if not chunk:
            break
        seen += chunk
except OSError:
    pass
print(seen.decode(errors="replace"))
print("exit", os.waitstatus_to_exitcode(status))
"#;

const PY_OPEN_AUTH: &str = r#"
import libvirt, os
libvirt.registerErrorHandler(lambda *a: None, None)
def cb(creds, data):
    for cr in creds:
        if cr[0] == libvirt.VIR_CRED_AUTHNAME:
            cr[4] = os.environ["USER_NAME"]
        elif cr[0] == libvirt.VIR_CRED_PASSPHRASE:
            cr[4] = os.environ["PASSWORD"]
    return 0
try:
    c = libvirt.openAuth(os.environ["URI"], [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE], cb, None], 0)
    print("domains", sorted(d.name() for d in c.listAllDomains()), c.lookupByName("test").info()[0])
    c.close()
except libvirt.libvirtError as e:
    print("refused", e.get_error_code(), e.get_error_message())
"#;

fn python_login(uri: &str, user: &str, password: &str) -> String {
    let out = Command::new("timeout")
        .args(["30", "/usr/bin/python3", "-c", PY_OPEN_AUTH])
        .env("URI", uri)
        .env("USER_NAME", user)
        .env("PASSWORD", password)
        .env_remove("LIBVIRT_AUTH_FILE")
        .output()
        .unwrap();
    text(&out)
}

/// Asserts that `out` failed and told the user `words`.
fn refused_with(out: &Output, words: &str) {
    assert!(
        !out.status.success() && text(out).contains(words),
        "expected a refusal saying {words:?}: {}",
        text(out)
    );
}

fn auth_failures(gw: &Gateway, reason: &str) -> f64 {
    sample(
        &gw.metrics(),
        "virtgate_proxy_auth_failures_total",
        &[("stage", "sasl"), ("reason", reason)],
    )
    .unwrap_or(0.0)
}

/// The broker's finished probes of the host (they go through the tap too).
fn probes(gw: &Gateway) -> usize {
    sample(&gw.metrics(), "virtgate_probe_duration_seconds_count", &[]).unwrap_or(0.0) as usize
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
fn virsh_and_python_log_in_with_a_password_and_refused_logins_never_reach_the_host() {
    let libvirtd = Libvirtd::start(LibvirtdOptions::default()).unwrap();
    let tap = Tap::start(
        "127.0.0.1:0",
        format!("127.0.0.1:{}", libvirtd.port()).parse().unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let rules = r#"
[proxy]
front_auth = "certificate_or_password"
login_failures_per_user = 5
[[proxy.rules]]
identity = "user:alice"
hosts = ["h1"]
mode = "rw"
[[proxy.rules]]
identity = "user:carol"
hosts = ["h9"]
mode = "rw"
"#;
    // `[proxy]` is already open in the gateway's file: the keys go after it.
    let gw = Gateway::start(
        dir.path(),
        &libvirtd,
        &format!(
            "{}{}",
            rules.replace("[proxy]\n", ""),
            host_toml(tap.addr.port())
        ),
    );
    gw.wait_trust("h1", "pending");
    gw.approve("h1");
    let (_, body) = gw.get("/v1/hosts/h1").unwrap();
    assert!(
        body.contains("\"auth\": \"none\""),
        "a host without SASL: {body}"
    );

    for (name, password) in [("alice", ALICE_PASSWORD), ("carol", CAROL_PASSWORD)] {
        let out = cli(
            &gw,
            &["users", "add", name, "--password-stdin"],
            &format!("{password}\n"),
        );
        assert!(out.status.success(), "users add {name}: {}", text(&out));
    }
    // At a terminal: two prompts, and the password is never echoed.
    let typed = "typed at a terminal";
    let out = Command::new("timeout")
        .args(["60", "/usr/bin/python3", "-c", PY_PTY_ADD, VIRTGATE])
        .arg(&gw.config)
        .arg("dave")
        .env("PASSWORD", typed)
        .output()
        .unwrap();
    let shown = text(&out);
    assert!(
        shown.contains("added: dave") && shown.contains("exit 0"),
        "{shown}"
    );
    assert!(!shown.contains(typed), "the password was echoed: {shown}");
    let listed = cli(&gw, &["users", "list"], "");
    let listed = text(&listed);
    assert!(
        listed.contains("alice") && listed.contains("SCRAM-SHA-256,SCRAM-SHA-512"),
        "{listed}"
    );
    // Only verifiers on disk.
    let stored = std::fs::read_to_string(gw.data_dir.join("users.json")).unwrap();
    assert!(stored.contains("SCRAM-SHA-256$4096:"), "{stored}");
    assert!(!stored.contains(ALICE_PASSWORD) && !stored.contains("correct"));

    let pki = no_certificate_pki(dir.path(), &libvirtd);
    let via = uri(&gw, &pki);
    let good_file = auth_file(dir.path(), "1", "alice", ALICE_PASSWORD);

    // The auth file: list and dominfo.
    for args in [&["list", "--all"][..], &["dominfo", "test"]] {
        let out = virsh_login(&via, Some(&good_file), "", args);
        assert!(out.status.success(), "virsh {args:?}: {}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("test"));
    }
    // Prompted: virsh reads the name and the password from a non-tty stdin.
    let out = virsh_login(
        &via,
        None,
        &format!("alice\n{ALICE_PASSWORD}\n"),
        &["list", "--all"],
    );
    assert!(out.status.success(), "prompted virsh: {}", text(&out));
    assert!(
        text(&out).contains("authentication name"),
        "virsh prompted: {}",
        text(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("running"));
    // python3-libvirt with openAuth.
    let py = python_login(&via, "alice", ALICE_PASSWORD);
    assert!(py.contains("domains ['test'] 1"), "{py}");
    // From here on only the broker's probes (1 s interval) may reach the host.
    let reached = tap.accepted();
    let probes_before = probes(&gw);

    // Refusals: wrong password, unknown user, a user without a rule for h1.
    let wrong_file = auth_file(dir.path(), "2", "alice", "not the password");
    let wrong = virsh_login(&via, Some(&wrong_file), "", &["list"]);
    let unknown_file = auth_file(dir.path(), "3", "mallory", ALICE_PASSWORD);
    let unknown = virsh_login(&via, Some(&unknown_file), "", &["list"]);
    for (what, out) in [("wrong password", &wrong), ("unknown user", &unknown)] {
        assert!(!out.status.success(), "{what}: {}", text(out));
        assert!(
            text(out).contains("wrong user name or password"),
            "{what}: {}",
            text(out)
        );
    }
    // The same error text for both (virsh prints it as it came).
    let error_line = |out: &Output| {
        text(out)
            .lines()
            .find(|l| l.contains("wrong user name or password"))
            .map(str::to_string)
    };
    assert_eq!(error_line(&wrong), error_line(&unknown));
    let py_wrong = python_login(&via, "alice", "nope nope nope");
    let py_unknown = python_login(&via, "mallory", "nope nope nope");
    assert!(py_wrong.starts_with("refused 45"), "{py_wrong}");
    assert_eq!(py_wrong, py_unknown, "one and the same refusal");
    let carol_file = auth_file(dir.path(), "4", "carol", CAROL_PASSWORD);
    let carol = virsh_login(&via, Some(&carol_file), "", &["list"]);
    refused_with(&carol, "access to host h1 denied for user:carol");
    // Five failures lock a name for the window: then even the right password gets the same reply.
    let out = cli(
        &gw,
        &["users", "add", "erin", "--password-stdin"],
        "erin's real password\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    let erin_wrong = auth_file(dir.path(), "erin-wrong", "erin", "guess guess");
    for _ in 0..5 {
        refused_with(
            &virsh_login(&via, Some(&erin_wrong), "", &["list"]),
            "wrong user name or password",
        );
    }
    let erin_right = auth_file(dir.path(), "erin-right", "erin", "erin's real password");
    refused_with(
        &virsh_login(&via, Some(&erin_right), "", &["list"]),
        "wrong user name or password",
    );
    assert!(auth_failures(&gw, "rate_limited") >= 1.0);

    // No password, no certificate: told how to log in.
    let none = virsh_login(&via, None, "", &["list"]);
    assert!(!none.status.success());
    // A probe started meanwhile may still run: its connection is counted already, its duration
    // not yet. Every extra host connection must turn out to be a finished probe.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let (extra, probed) = loop {
        std::thread::sleep(Duration::from_millis(300));
        let (extra, probed) = (tap.accepted() - reached, probes(&gw) - probes_before);
        if extra <= probed || std::time::Instant::now() > deadline {
            break (extra, probed);
        }
    };
    assert!(
        extra <= probed,
        "{extra} host connections, {probed} of them probes: a refused login reached the host"
    );
    assert!(auth_failures(&gw, "wrong_password") >= 2.0);
    assert!(auth_failures(&gw, "unknown_user") >= 2.0);

    // A password change applies to the next login; removal too.
    let out = cli(
        &gw,
        &["users", "passwd", "alice", "--password-stdin"],
        "a brand new password\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    let old = virsh_login(&via, Some(&good_file), "", &["list"]);
    assert!(!old.status.success(), "the old password: {}", text(&old));
    let new_file = auth_file(dir.path(), "new", "alice", "a brand new password");
    let new = virsh_login(&via, Some(&new_file), "", &["list"]);
    assert!(new.status.success(), "the new password: {}", text(&new));
    let out = cli(&gw, &["users", "remove", "carol"], "");
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&cli(&gw, &["users", "list"], "")).contains("carol"));

    // A client certificate alone still works in this mode (a DN rule is needed for a host).
    let bob = identity(&libvirtd, "bob", "C=GB,O=virtgate-test,CN=bob");
    let out = virsh(&gw.uri("127.0.0.1", "h1", &bob), &["list"]);
    assert!(!out.status.success(), "bob has no rule: {}", text(&out));

    // Secrets never in the logs.
    let logs = gw.process.stderr_text();
    for secret in [
        ALICE_PASSWORD,
        CAROL_PASSWORD,
        "not the password",
        "a brand new password",
        "erin's real password",
        typed,
    ] {
        assert!(!logs.contains(secret), "{secret:?} in the gateway's log");
    }
    assert!(logs.contains("alice"), "logins are logged by name:\n{logs}");
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
fn the_gateway_logs_in_to_a_sasl_libvirtd_with_the_stored_credentials() {
    let libvirtd = Libvirtd::start(LibvirtdOptions::with_sasl_user("nova", HOST_PASSWORD)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules = "[[proxy.rules]]\nidentity = \"*CN=alice\"\nhosts = [\"*\"]\nmode = \"rw\"\n";
    let gw = Gateway::start(
        dir.path(),
        &libvirtd,
        &format!("{rules}{}", host_toml(libvirtd.port())),
    );
    gw.wait_trust("h1", "pending");
    gw.approve("h1");
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    let via = gw.uri("127.0.0.1", "h1", &alice);

    // The broker's probe notes that the host demands SASL, and `virtgate hosts` shows it.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !gw
        .get("/v1/hosts/h1")
        .is_ok_and(|(_, body)| body.contains("\"auth\": \"sasl\""))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            gw.get("/v1/hosts/h1")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let hosts = text(&cli(&gw, &["hosts"], ""));
    let row = hosts
        .lines()
        .find(|l| l.starts_with("h1 "))
        .unwrap_or_default();
    assert!(row.contains(" sasl "), "{hosts}");

    // No credentials: the error names the command that sets them.
    refused_with(
        &virsh(&via, &["list"]),
        "virtgate hosts credentials h1 --user NAME",
    );

    // Wrong credentials: a clear error, counted.
    let out = cli(
        &gw,
        &[
            "hosts",
            "credentials",
            "h1",
            "--user",
            "nova",
            "--password-stdin",
        ],
        "not-the-host-password\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    refused_with(&virsh(&via, &["list"]), "refused the gateway's SASL login");
    let failures = sample(
        &gw.metrics(),
        "virtgate_proxy_backend_login_failures_total",
        &[("reason", "rejected")],
    );
    assert_eq!(failures, Some(1.0), "one attempt per client connection");

    // The right ones: virsh through the gateway works.
    let out = cli(
        &gw,
        &[
            "hosts",
            "credentials",
            "h1",
            "--user",
            "nova",
            "--password-stdin",
        ],
        &format!("{HOST_PASSWORD}\n"),
    );
    assert!(out.status.success(), "{}", text(&out));
    for args in [&["list", "--all"][..], &["dominfo", "test"]] {
        let out = virsh(&via, args);
        assert!(out.status.success(), "virsh {args:?}: {}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("test"));
    }
    // After a proven login the file keeps the SaltedPassword, not the password, and still works.
    let file = gw.data_dir.join("host-credentials/h1");
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(!stored.contains(HOST_PASSWORD), "{stored}");
    assert!(stored.contains("salted_password"), "{stored}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let out = virsh(&via, &["hostname"]);
    assert!(
        out.status.success(),
        "with the SaltedPassword: {}",
        text(&out)
    );

    let logs = gw.process.stderr_text();
    assert!(!logs.contains(HOST_PASSWORD) && !logs.contains("not-the-host-password"));

    // Removing them brings back the clear error.
    let out = cli(&gw, &["hosts", "credentials", "h1", "--remove"], "");
    assert!(out.status.success(), "{}", text(&out));
    let out = virsh(&via, &["list"]);
    assert!(
        text(&out).contains("virtgate hosts credentials h1"),
        "{}",
        text(&out)
    );
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
fn a_separate_proxy_follows_the_brokers_users_and_logs_in_to_a_sasl_host_from_the_credentials_directory(
) {
    let libvirtd = Libvirtd::start(LibvirtdOptions::with_sasl_user("nova", HOST_PASSWORD)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules = "\nfront_auth = \"certificate_or_password\"\n\
                 [[proxy.rules]]\nidentity = \"user:alice\"\nhosts = [\"h1\"]\nmode = \"rw\"\n";
    // The gateway's config file, its two halves run as separate processes.
    let gw = Gateway::start(
        dir.path(),
        &libvirtd,
        &format!("{rules}{}", host_toml(libvirtd.port())),
    );
    gw.wait_trust("h1", "pending");
    gw.approve("h1");
    let (config, api, data_dir) = (gw.config.clone(), gw.api, gw.data_dir.clone());
    drop(gw);
    let broker = broker_alone(&config, api);
    let plain = format!("http://{api}");
    let admin = |args: &[&str], stdin: &str| {
        let mut child = Command::new(VIRTGATE)
            .args(["--config", config.to_str().unwrap()])
            .args(args)
            .args(["--broker", &plain])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        child.wait_with_output().unwrap()
    };
    let out = admin(
        &["users", "add", "alice", "--password-stdin"],
        &format!("{ALICE_PASSWORD}\n"),
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = admin(
        &[
            "hosts",
            "credentials",
            "h1",
            "--user",
            "nova",
            "--password-stdin",
        ],
        &format!("{HOST_PASSWORD}\n"),
    );
    assert!(out.status.success(), "{}", text(&out));

    let (port, metrics_port) = (common::free_port(), common::free_port());
    let token = data_dir.join("admin.token");
    let mut proxy_cmd = Command::new(VIRTGATE);
    proxy_cmd
        .args([
            "--config",
            config.to_str().unwrap(),
            "proxy",
            "--broker",
            &plain,
        ])
        .args(["--broker-token-file", token.to_str().unwrap()])
        .env("VIRTGATE_PROXY__LISTEN", format!("[\"127.0.0.1:{port}\"]"))
        .env(
            "VIRTGATE_PROXY__METRICS_LISTEN",
            format!("127.0.0.1:{metrics_port}"),
        )
        .env(
            "VIRTGATE_PROXY__HOST_CREDENTIALS_DIR",
            data_dir.join("host-credentials"),
        );
    let mut proxy = virtgate_testlab::LabProcess::spawn(proxy_cmd).unwrap();
    proxy
        .wait_for_stderr("following the broker's users", Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{}", proxy.stderr_text()));
    let pki = no_certificate_pki(dir.path(), &libvirtd);
    let via = format!(
        "test+tls://127.0.0.1:{port}/default?name=test://h1/default&pkipath={}",
        pki.display()
    );
    // Both directions at once: alice's password at the door, nova's SCRAM login at the host.
    let good_file = auth_file(dir.path(), "5", "alice", ALICE_PASSWORD);
    let out = virsh_login(&via, Some(&good_file), "", &["dominfo", "test"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out),
        proxy.stderr_text()
    );
    let py = python_login(&via, "alice", ALICE_PASSWORD);
    assert!(py.contains("domains ['test'] 1"), "{py}");

    // A new password reaches the proxy through the long-poll, without a restart.
    let out = admin(
        &["users", "passwd", "alice", "--password-stdin"],
        "the second password\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    let new_file = auth_file(dir.path(), "6", "alice", "the second password");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let out = virsh_login(&via, Some(&new_file), "", &["list"]);
        if out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new password never worked: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let old = virsh_login(&via, Some(&good_file), "", &["list"]);
    assert!(!old.status.success(), "{}", text(&old));
    let logs = format!("{}{}", proxy.stderr_text(), broker.stderr_text());
    for secret in [ALICE_PASSWORD, HOST_PASSWORD, "the second password"] {
        assert!(!logs.contains(secret), "{secret:?} in the logs");
    }
}

#[test]
fn with_certificate_and_password_both_are_needed_and_the_rule_names_the_user() {
    let libvirtd = Libvirtd::start(LibvirtdOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules = "\nfront_auth = \"certificate_and_password\"\n\
                 [[proxy.rules]]\nidentity = \"user:alice\"\nhosts = [\"h1\"]\nmode = \"rw\"\n";
    let gw = Gateway::start(
        dir.path(),
        &libvirtd,
        &format!("{rules}{}", host_toml(libvirtd.port())),
    );
    gw.wait_trust("h1", "pending");
    gw.approve("h1");
    let out = cli(
        &gw,
        &["users", "add", "alice", "--password-stdin"],
        &format!("{ALICE_PASSWORD}\n"),
    );
    assert!(out.status.success(), "{}", text(&out));
    let password = auth_file(dir.path(), "alice", "alice", ALICE_PASSWORD);
    // bob's certificate has no rule of its own; with alice's password the user rule applies.
    let bob = identity(&libvirtd, "bob", "C=GB,O=virtgate-test,CN=bob");
    let with_cert = gw.uri("127.0.0.1", "h1", &bob);
    let out = virsh_login(&with_cert, Some(&password), "", &["dominfo", "test"]);
    assert!(
        out.status.success(),
        "certificate and password: {}",
        text(&out)
    );
    // The certificate alone: told to log in.
    let out = virsh_login(&with_cert, None, "", &["list"]);
    assert!(!out.status.success(), "{}", text(&out));
    // The password alone: no certificate, no connection.
    let pki = no_certificate_pki(dir.path(), &libvirtd);
    let out = virsh_login(&uri(&gw, &pki), Some(&password), "", &["list"]);
    assert!(
        !out.status.success(),
        "password without certificate: {}",
        text(&out)
    );
    let wrong = auth_file(dir.path(), "wrong", "alice", "nope nope nope");
    refused_with(
        &virsh_login(&with_cert, Some(&wrong), "", &["list"]),
        "wrong user name or password",
    );
}
