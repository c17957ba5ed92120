//! Users must not be able to walk around the gateway (issue 9 §3), with a real libvirtd.
//!
//! `virtgate up` on its development PKI, in front of one host name whose address is a TCP
//! forwarder: first to a libvirtd set up as the old docs said (it trusts the CA that signs
//! users' certificates, no `tls_allowed_dn_list`), then to one set up as docs/pki.md says now
//! (it trusts only the backend CA and allows only the gateway's DN).
#![allow(clippy::disallowed_types)] // synchronous test code: std's clock is the right one

mod common;

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::gateway::text;
use common::{free_port, sample, VIRTGATE};
use serde_json::Value;
use virtgate_pki::{bootstrap_dev, BACKEND_DN, BYPASS_PROBE_DN};
use virtgate_testlab::libvirtd::{Libvirtd, LibvirtdOptions};
use virtgate_testlab::LabProcess;

/// Forwards every new connection to `127.0.0.1:<target>`; the target can change, so one host
/// name can be served by one daemon and then another.
struct Forwarder {
    port: u16,
    target: Arc<AtomicU16>,
}

impl Forwarder {
    fn start(target: u16) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Arc::new(AtomicU16::new(target));
        let to = target.clone();
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let addr = SocketAddr::from(([127, 0, 0, 1], to.load(Ordering::SeqCst)));
                let Ok(server) = TcpStream::connect(addr) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                thread::spawn(move || pump(client, server));
                thread::spawn(move || pump(s2, c2));
            }
        });
        Forwarder { port, target }
    }

    fn point_to(&self, target: u16) {
        self.target.store(target, Ordering::SeqCst);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

fn virsh(uri: &str, args: &[&str]) -> Output {
    Command::new("/usr/bin/timeout")
        .args(["30", "/usr/bin/virsh", "-c", uri])
        .args(args)
        .env_remove("LIBVIRT_DEFAULT_URI")
        .output()
        .unwrap()
}

/// The admin bundle straight at a libvirtd, skipping the gateway. `no_verify=1`: the bundle's
/// cacert.pem holds the users' CA, not the host's, and whoever walks around the gateway does
/// not care who the host is; what matters is whether the host lets the bundle in.
fn direct(libvirtd: &Libvirtd, admin: &Path) -> String {
    format!(
        "test+tls://127.0.0.1:{}/default?pkipath={}&no_verify=1",
        libvirtd.port(),
        admin.display()
    )
}

fn bypassable(host: &Value) -> Option<String> {
    host["findings"]
        .as_array()?
        .iter()
        .find(|f| f["kind"] == "bypassable")
        .map(|f| f["detail"].as_str().unwrap_or_default().to_string())
}

/// Polls `/v1/hosts/localhost` until `pred` holds.
/// A GET of `up`'s API, over HTTPS with the development CA it made for it.
fn get(api: SocketAddr, data: &Path, path: &str) -> Option<(u16, String)> {
    let ca = data.join("pki/broker/cacert.pem");
    if !ca.is_file() {
        return None;
    }
    let tls = common::tls_client(&ca, None);
    common::https(api, &tls, "GET", path, None, None).ok()
}

fn wait_host(
    api: SocketAddr,
    data: &Path,
    up: &LabProcess,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Some((200, body)) = get(api, data, "/v1/hosts/localhost") {
            last = serde_json::from_str::<Value>(&body).unwrap()["host"].clone();
            if pred(&last) {
                return last;
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "condition not met within 20 s; last: {last:#}\nstderr:\n{}",
        up.stderr_text()
    );
}

fn metric(api: SocketAddr, data: &Path) -> Option<f64> {
    let (_, body) = get(api, data, "/metrics").unwrap();
    sample(
        &body,
        "virtgate_cert_findings",
        &[("host", "localhost"), ("finding", "bypassable")],
    )
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
fn a_host_set_up_as_the_old_docs_said_is_bypassable_and_one_set_up_as_the_new_docs_say_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The development PKI `up` will reuse: its users' CA (ca/) and its backend CA.
    let pki = bootstrap_dev(&data, &["localhost".into()], &[]).unwrap();
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    let old = Libvirtd::start(LibvirtdOptions {
        extra_client_cas: vec![read(&pki.users_ca.cert)],
        tls_allowed_dn_list: None,
        ..LibvirtdOptions::default()
    })
    .unwrap();
    let new = Libvirtd::start(LibvirtdOptions {
        extra_client_cas: vec![read(&pki.backend_ca.cert)],
        tls_allowed_dn_list: Some(vec![BACKEND_DN.to_string()]),
        ..LibvirtdOptions::default()
    })
    .unwrap();
    let forwarder = Forwarder::start(old.port());

    // Both daemons' CAs are trusted, so the host stays `trusted_ca` when the forwarder moves on.
    let (old_ca, new_ca) = (dir.path().join("old-ca.pem"), dir.path().join("new-ca.pem"));
    std::fs::write(&old_ca, old.ca().cert_pem()).unwrap();
    std::fs::write(&new_ca, new.ca().cert_pem()).unwrap();
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gateway_port = free_port();
    let config = dir.path().join("virtgate.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\ndata_dir = {data:?}\nlisten = \"{api}\"\ndiscovery = false\n\
             probe_interval = \"1s\"\ntrusted_ca_files = [{old_ca:?}, {new_ca:?}]\n\
             [[broker.hosts]]\nname = \"localhost\"\naddresses = [\"127.0.0.1\"]\nport = {}\n\
             [proxy]\nlisten = [\"127.0.0.1:{gateway_port}\"]\n",
            forwarder.port,
        ),
    )
    .unwrap();
    let mut cmd = Command::new(VIRTGATE);
    cmd.args(["--config", config.to_str().unwrap(), "up"])
        .env("RUST_LOG", "info");
    let up = LabProcess::spawn(cmd).unwrap();

    // Old docs: the broker finds the way around the gateway, certain because `up` lets it sign
    // a throwaway user certificate with the users' CA.
    let host = wait_host(api, &data, &up, |h| bypassable(h).is_some());
    assert_eq!(host["trust"], "trusted_ca", "{host:#}");
    let detail = bypassable(&host).unwrap();
    assert!(
        detail.starts_with("certain: ")
            && detail.contains(BYPASS_PROBE_DN)
            && detail.contains("users' CA")
            && detail.contains(BACKEND_DN),
        "{detail}"
    );
    assert_eq!(metric(api, &data), Some(1.0));
    // And it is real: the admin bundle, straight at the host, gets in read-write (the test
    // driver's state lives as long as the connection, so both commands share one).
    let admin = &pki.admin.dir;
    let out = virsh(&direct(&old, admin), &["suspend test; domstate test"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("paused"),
        "a write straight at the old-docs host: {}",
        text(&out)
    );

    // New docs: the same host name now answers from a host that trusts only the backend CA.
    forwarder.point_to(new.port());
    let host = wait_host(api, &data, &up, |h| {
        bypassable(h).is_none() && h["presented_pin"] == new.server_cert().spki_sha256_hex()
    });
    assert_eq!(host["trust"], "trusted_ca", "{host:#}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(api, &data).is_some() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(api, &data), None, "the finding left /metrics too");

    // libvirtd completes the handshake, checks the certificate and closes without libvirt's
    // confirmation byte: refused by the host, not by the client.
    let out = virsh(&direct(&new, admin), &["list", "--all"]);
    assert!(
        !out.status.success() && text(&out).contains("Unable to read TLS confirmation"),
        "the admin bundle straight at the new-docs host must be refused by libvirtd: {}",
        text(&out)
    );
    let through = format!(
        "test+tls://localhost:{gateway_port}/default?name=test://localhost/default&pkipath={}",
        admin.display()
    );
    let out = virsh(&through, &["list", "--all"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("test"),
        "through the gateway the admin still reaches the host: {}\n{}",
        text(&out),
        up.stderr_text()
    );
}

/// A standalone broker knows which CAs sign users' certificates (`broker.user_ca_files`) but
/// not their key: from the certificate request alone it can only say "possible". With the key
/// it tries a throwaway user certificate and knows.
#[test]
fn from_the_certificate_request_alone_a_bypass_is_possible_and_the_users_ca_key_settles_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = bootstrap_dev(&dir.path().join("pki-data"), &[], &[]).unwrap();
    let users_ca = std::fs::read_to_string(&pki.users_ca.cert).unwrap();
    // Trusts the users' CA, but allows only the gateway's DN: the old docs' optional step done.
    let listed = Libvirtd::start(LibvirtdOptions {
        extra_client_cas: vec![users_ca],
        tls_allowed_dn_list: Some(vec![BACKEND_DN.to_string()]),
        ..LibvirtdOptions::default()
    })
    .unwrap();
    let host = format!(
        "[[broker.hosts]]\nname = \"localhost\"\naddresses = [\"127.0.0.1\"]\nport = {}\n",
        listed.port()
    );
    let users = format!(
        "user_ca_files = [{:?}]\n",
        pki.users_ca.cert.display().to_string()
    );
    let key = format!(
        "user_ca_key_file = {:?}\n",
        pki.users_ca.key.display().to_string()
    );

    let keyless_dir = dir.path().join("keyless");
    std::fs::create_dir(&keyless_dir).unwrap();
    let keyless = common::Broker::start(&keyless_dir, &format!("{users}{host}"));
    let probed = keyless.wait_host("localhost", Duration::from_secs(15), |h| h["state"] == "up");
    let detail = bypassable(&probed).expect("a finding from the certificate request");
    assert!(
        detail.starts_with("possible: ")
            && detail.contains(&format!("from {}", users_ca_subject(&pki.users_ca.cert)))
            && detail.contains("unless its tls_allowed_dn_list excludes them"),
        "{detail}"
    );

    let keyed_dir = dir.path().join("keyed");
    std::fs::create_dir(&keyed_dir).unwrap();
    let keyed = common::Broker::start(&keyed_dir, &format!("{users}{key}{host}"));
    let probed = keyed.wait_host("localhost", Duration::from_secs(15), |h| h["state"] == "up");
    assert_eq!(
        bypassable(&probed),
        None,
        "the allow-list refused a throwaway user certificate: {probed:#}"
    );
    assert!(
        listed
            .log_text()
            .contains("not on the list of allowed clients"),
        "refused for its DN:\n{}",
        listed.log_text()
    );
}

fn users_ca_subject(cert: &Path) -> String {
    let der = virtgate_pki::read_certs(cert).unwrap().remove(0);
    virtgate_pki::subject_dn(&der).unwrap()
}
