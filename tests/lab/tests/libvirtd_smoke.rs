//! A real libvirtd (test driver) over TLS on loopback, driven by the real virsh and
//! python3-libvirt clients: the acceptance test for the libvirtd peer that proxy tests build on.
#![allow(clippy::disallowed_types)] // synchronous test code: std's clock is the right one

use std::process::Output;
use std::time::Instant;

use virtgate_testlab::libvirtd::{Libvirtd, LibvirtdOptions, LIBVIRTD_TOOLS};
use virtgate_testlab::pki::{ClientCertSpec, KeyUsageProfile, ServerCertSpec};
use virtgate_testlab::{require_python3_modules, require_root_and_tools};

fn require_env() {
    require_root_and_tools(LIBVIRTD_TOOLS);
    require_python3_modules(&["libvirt", "ssl"]);
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `virsh list --all` on the test driver has exactly the row `1  test  running`.
fn assert_test_domain_running(out: &Output, daemon: &Libvirtd) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let row = stdout
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["1", "test", "running"]);
    assert!(
        out.status.success() && row,
        "{}\ndaemon log tail:\n{}",
        text(out),
        daemon.log_text()
    );
}

/// Opens raw TLS connections with Python's `ssl` (no libvirt client checks in the way) and
/// reports the first byte libvirtd sends (its 0x01 "certificate accepted" confirmation)
/// without a client certificate, with the default one and with the one in `$EXTRA_PKI` (if
/// set), plus the SHA-256 of the certificate the server presented.
const TLS_PROBE: &str = r#"
import hashlib, os, socket, ssl
port = int(os.environ['VIRTGATE_LAB_PORT'])
pki = os.environ['VIRTGATE_LAB_PKI_DIR']
def probe(client_dir):
    ctx = ssl.create_default_context(cafile=pki + '/cacert.pem')
    if client_dir:
        ctx.load_cert_chain(client_dir + '/clientcert.pem', client_dir + '/clientkey.pem')
    with socket.create_connection(('127.0.0.1', port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname='127.0.0.1') as s:
            served = hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()
            try:
                first = repr(s.recv(1))
            except (ConnectionError, ssl.SSLError) as e:
                first = 'error:' + type(e).__name__
            return first, served
nocert, served = probe(None)
print('nocert=' + nocert)
print('withcert=' + probe(pki)[0])
if os.environ.get('EXTRA_PKI'):
    print('extra=' + probe(os.environ['EXTRA_PKI'])[0])
print('served=' + served)
"#;

struct Probe {
    nocert: String,
    withcert: String,
    extra: Option<String>,
    served: String,
}

fn tls_probe(daemon: &Libvirtd, extra_pki: Option<&std::path::Path>) -> Probe {
    let extra = extra_pki.map(|d| d.display().to_string());
    let vars: Vec<(&str, &str)> = extra.iter().map(|d| ("EXTRA_PKI", d.as_str())).collect();
    let out = daemon
        .python_with_env(TLS_PROBE, &vars)
        .expect("run TLS probe");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |k: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
    };
    let need = |k: &str| field(k).unwrap_or_else(|| panic!("no {k}= in {stdout}"));
    Probe {
        nocert: need("nocert"),
        withcert: need("withcert"),
        extra: field("extra"),
        served: need("served"),
    }
}

fn refused(first_byte: &str) -> bool {
    first_byte == "b''" || first_byte.starts_with("error:")
}

fn sha256_hex(data: &[u8]) -> String {
    virtgate_testlab::pki::hex(&virtgate_testlab::pki::sha256(data))
}

#[test]
fn virsh_and_python_reach_the_test_driver_over_ipv4_ipv6_and_localhost() {
    require_env();
    let t = Instant::now();
    // Two at once: parallel tests rely on daemons not sharing ports, pid files or sockets.
    let (daemon, second) = std::thread::scope(|s| {
        let a = s.spawn(|| Libvirtd::start(LibvirtdOptions::default()));
        let b = s.spawn(|| Libvirtd::start(LibvirtdOptions::default()));
        (
            a.join().unwrap().expect("start libvirtd"),
            b.join().unwrap().expect("start second libvirtd"),
        )
    });
    eprintln!("two daemons listening after {:?}", t.elapsed());
    assert!(daemon.has_ipv6(), "the /etc/hosts dual-stack trick failed");
    assert_ne!(daemon.port(), second.port());
    assert_ne!(daemon.pid(), second.pid());

    for uri in [daemon.uri_v4(), daemon.uri_v6(), daemon.uri("localhost")] {
        let t = Instant::now();
        let out = daemon.virsh_at(&uri, &["list", "--all"]).expect("virsh");
        assert_test_domain_running(&out, &daemon);
        eprintln!("virsh list via {uri}: {:?}", t.elapsed());
    }
    assert_test_domain_running(&second.virsh(&["list", "--all"]).expect("virsh"), &second);

    let out = daemon
        .python(
            "import os, libvirt\n\
             libvirt.registerErrorHandler(lambda *a: None, None)\n\
             for var in ('VIRTGATE_LAB_URI', 'VIRTGATE_LAB_URI_V6', 'VIRTGATE_LAB_URI_LOCALHOST'):\n\
             \x20   c = libvirt.open(os.environ[var])\n\
             \x20   print(c.getLibVersion(), c.listAllDomains()[0].name())\n\
             \x20   c.close()\n",
        )
        .expect("python");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for line in lines {
        let (version, domain) = line.split_once(' ').expect("two fields");
        assert!(version.parse::<u64>().expect("number") > 0, "{line}");
        assert_eq!(domain, "test");
    }
}

#[test]
fn sasl_scram_accepts_the_right_password_and_refuses_a_wrong_one() {
    require_env();
    let daemon = Libvirtd::start(LibvirtdOptions::with_sasl_user("alice", "s3cret-pass"))
        .expect("start libvirtd with SASL");
    let conf = std::fs::read_to_string(daemon.dir().join("libvirtd.conf")).unwrap();
    assert!(conf.contains("auth_tls = \"sasl\""), "{conf}");

    assert_test_domain_running(&daemon.virsh(&["list", "--all"]).expect("virsh"), &daemon);

    let wrong = daemon.write_auth_file("alice", "not-the-password").unwrap();
    let out = daemon
        .virsh_with_auth_file(&daemon.uri_v4(), Some(&wrong), &["list", "--all"])
        .expect("virsh");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("authentication failed"),
        "{}",
        text(&out)
    );

    let nobody = daemon.write_auth_file("mallory", "s3cret-pass").unwrap();
    let out = daemon
        .virsh_with_auth_file(&daemon.uri_v4(), Some(&nobody), &["list", "--all"])
        .expect("virsh");
    assert!(
        !out.status.success(),
        "unknown user accepted: {}",
        text(&out)
    );

    // python3-libvirt needs openAuth for SCRAM (plain open() registers no SASL callbacks).
    let out = daemon
        .python(
            "import os, libvirt\n\
             libvirt.registerErrorHandler(lambda *a: None, None)\n\
             def cb(creds, pw):\n\
             \x20   for c in creds:\n\
             \x20       c[4] = os.environ['VIRTGATE_LAB_SASL_USER'] if c[0] == libvirt.VIR_CRED_AUTHNAME else pw\n\
             \x20   return 0\n\
             auth = [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE], cb, None]\n\
             for pw in (os.environ['VIRTGATE_LAB_SASL_PASSWORD'], 'wrong'):\n\
             \x20   auth[2] = pw\n\
             \x20   try:\n\
             \x20       c = libvirt.openAuth(os.environ['VIRTGATE_LAB_URI'], auth, 0)\n\
             \x20       print('ok', c.getLibVersion())\n\
             \x20       c.close()\n\
             \x20   except libvirt.libvirtError as e:\n\
             \x20       print('refused', e.get_error_code())\n",
        )
        .expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.len() == 2 && lines[0].starts_with("ok ") && lines[1] == "refused 45",
        "{}",
        text(&out)
    );
}

#[test]
fn clients_without_an_acceptable_certificate_are_refused() {
    require_env();
    let daemon = Libvirtd::start(LibvirtdOptions::default()).expect("start libvirtd");
    // Critical KU without keyEncipherment: libvirtd checks the peer's certificate in every
    // session (real-libvirtd.md pitfall 5), so this must be refused like no certificate at all.
    let ds_only = daemon
        .issue_client_pki_dir(
            "ds-only",
            &ClientCertSpec {
                key_usage: KeyUsageProfile::DigitalSignatureOnly,
                ..ClientCertSpec::new("C=GB,O=virtgate-test,CN=ds-only")
            },
        )
        .unwrap();
    let p = tls_probe(&daemon, Some(&ds_only));
    eprintln!(
        "first byte without certificate: {}, with: {}, with DS-only KU: {:?}",
        p.nocert, p.withcert, p.extra
    );
    // libvirtd completes the handshake, then closes instead of sending its 0x01 byte
    // (real-libvirtd.md pitfall 8).
    let log = daemon.log_text();
    assert!(refused(&p.nocert), "no-cert client got {}\n{log}", p.nocert);
    assert_eq!(p.withcert, "b'\\x01'", "{log}");
    assert!(refused(p.extra.as_deref().unwrap()), "{:?}\n{log}", p.extra);
    assert_eq!(p.served, sha256_hex(&daemon.server_cert().cert_der));
    assert!(log.contains("Failed to verify peer's certificate"), "{log}");
    assert!(
        log.contains("[session] usage does not permit key encipherment"),
        "{log}"
    );
}

#[test]
fn start_failure_reports_the_daemon_log() {
    require_env();
    let err = Libvirtd::start(LibvirtdOptions {
        server_cert: ServerCertSpec::localhost()
            .with_key_usage(KeyUsageProfile::DigitalSignatureOnly),
        ..LibvirtdOptions::default()
    })
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("usage does not permit key encipherment"),
        "{msg}"
    );
}

#[test]
fn restart_with_a_new_server_key_keeps_the_port_and_changes_the_pin() {
    require_env();
    let mut daemon = Libvirtd::start(LibvirtdOptions::default()).expect("start libvirtd");
    let (port, pid, pin) = (
        daemon.port(),
        daemon.pid(),
        daemon.server_cert().spki_sha256,
    );
    let t = Instant::now();
    daemon
        .restart_with_server_cert(ServerCertSpec::localhost())
        .expect("restart");
    eprintln!("restart took {:?}", t.elapsed());
    assert_eq!(daemon.port(), port);
    assert_ne!(daemon.pid(), pid);
    assert_ne!(daemon.server_cert().spki_sha256, pin);
    let p = tls_probe(&daemon, None);
    assert_eq!(p.withcert, "b'\\x01'");
    assert_eq!(p.served, sha256_hex(&daemon.server_cert().cert_der));
    assert_test_domain_running(
        &daemon
            .virsh_at(&daemon.uri_v6(), &["list", "--all"])
            .unwrap(),
        &daemon,
    );
}
