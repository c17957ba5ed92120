//! The broker against real TLS peers: libvirtd (test driver) daemons on loopback, each with its
//! own throwaway PKI. The broker runs with `discovery = false` (no mDNS in the root namespace).
#![allow(clippy::disallowed_types)] // synchronous test code: std's clock is the right one

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{sample, Broker, BrokerCert};
use serde_json::Value;
use virtgate_testlab::libvirtd::{Libvirtd, LibvirtdOptions};
use virtgate_testlab::pki::{ClientCertSpec, ServerCertSpec};

fn libvirtd_with(cert: ServerCertSpec) -> Libvirtd {
    Libvirtd::start(LibvirtdOptions {
        server_cert: cert,
        ..Default::default()
    })
    .expect("start libvirtd")
}

fn static_host(name: &str, port: u16) -> String {
    format!("[[broker.hosts]]\nname = \"{name}\"\naddresses = [\"127.0.0.1\"]\nport = {port}\n")
}

fn finding_kinds(host: &Value) -> Vec<String> {
    host["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap().to_string())
        .collect()
}

fn probed(host: &Value) -> bool {
    host["state"] == "up"
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
fn expiry_san_coverage_and_cn_only_are_found_and_exported_exactly() {
    let expiring = ServerCertSpec::localhost().expiring_in(time::Duration::days(10));
    let expected_not_after = expiring.not_after.unix_timestamp();
    let a = libvirtd_with(expiring);
    let b = libvirtd_with(ServerCertSpec::for_names(
        "b-host",
        &["b-host"],
        &["::1".parse().unwrap()],
    ));
    let c = libvirtd_with(ServerCertSpec::cn_only("c-host"));
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("trusted-ca.pem");
    std::fs::write(&ca_file, a.ca().cert_pem()).unwrap();
    let broker = Broker::start(
        dir.path(),
        &format!(
            "trusted_ca_files = [{:?}]\n{}{}{}",
            ca_file.display().to_string(),
            static_host("localhost", a.port()),
            static_host("b-host", b.port()),
            static_host("c-host", c.port())
        ),
    );

    let host_a = broker.wait_host("localhost", Duration::from_secs(15), probed);
    let host_b = broker.wait_host("b-host", Duration::from_secs(15), probed);
    let host_c = broker.wait_host("c-host", Duration::from_secs(15), probed);

    assert!(
        finding_kinds(&host_a).contains(&"expiring_soon".to_string()),
        "{host_a:#}"
    );
    assert_eq!(
        host_a["trust"], "trusted_ca",
        "chain to the configured CA, name covered: {host_a:#}"
    );
    assert_eq!(host_a["presented_pin"], a.server_cert().spki_sha256_hex());
    let kinds_b = finding_kinds(&host_b);
    assert!(
        kinds_b.contains(&"name_not_covered".to_string()),
        "127.0.0.1 is not in b's SANs: {host_b:#}"
    );
    assert!(
        kinds_b.contains(&"untrusted_chain".to_string()),
        "b's CA is not configured: {host_b:#}"
    );
    assert_eq!(host_b["trust"], "pending");
    let detail = host_b["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "name_not_covered")
        .unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        detail.contains("not in the subjectAltName: 127.0.0.1;"),
        "only the address is missing: {detail}"
    );
    assert!(
        finding_kinds(&host_c).contains(&"cn_only".to_string()),
        "{host_c:#}"
    );

    let metrics = broker.metrics();
    let not_after = sample(
        &metrics,
        "virtgate_cert_not_after_timestamp_seconds",
        &[("host", "localhost"), ("role", "host")],
    );
    assert_eq!(
        not_after,
        Some(expected_not_after as f64),
        "exact notAfter in /metrics"
    );
    let serial = host_a["endpoints"][0]["chain"][0]["serial"]
        .as_str()
        .unwrap();
    assert!(metrics.contains(&format!("serial=\"{serial}\"")));
    assert_eq!(
        sample(
            &metrics,
            "virtgate_cert_findings",
            &[("host", "localhost"), ("finding", "expiring_soon")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "virtgate_cert_findings",
            &[("host", "b-host"), ("finding", "name_not_covered")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "virtgate_cert_findings",
            &[("host", "c-host"), ("finding", "cn_only")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "virtgate_host_trust",
            &[("host", "b-host"), ("state", "pending")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "virtgate_hosts", &[("state", "up")]),
        Some(3.0)
    );

    // `virtgate certs --expiring 30d` lists exactly the expiring certificate, and exits 1 because
    // it found one (what a monitor or a script acts on).
    let out = broker.cli(&["certs", "--expiring", "30d", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["host"].as_str().unwrap(), r["role"].as_str().unwrap()))
        .collect();
    assert_eq!(listed, vec![("localhost", "host")], "{rows:#?}");
    let table = broker.cli(&["certs", "--expiring", "30d"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.starts_with("NOT AFTER") && table.contains("localhost") && !table.contains("b-host"),
        "{table}"
    );
    let all = broker.cli(&["certs", "--json"]);
    let all: Vec<Value> = serde_json::from_slice(&all.stdout).unwrap();
    let host_leaves = all.iter().filter(|r| r["role"] == "host").count();
    assert_eq!(host_leaves, 3, "one leaf per host: {all:#?}");
    assert!(
        all.iter()
            .all(|r| r["role"] == "host" || r["host"] == "virtgate"),
        "besides the hosts' leaves, only virtgate's own certificates: {all:#?}"
    );
    assert!(
        all.windows(2)
            .all(|w| w[0]["not_after"].as_i64() <= w[1]["not_after"].as_i64()),
        "sorted by expiry"
    );
}

#[test]
fn a_swapped_key_is_an_alarm_until_approved_and_approvals_survive_kill_9() {
    let mut libvirtd = libvirtd_with(ServerCertSpec::localhost());
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        dir.path(),
        &format!(
            "probe_interval = \"1s\"\n{}",
            static_host("localhost", libvirtd.port())
        ),
    );
    let first_pin = libvirtd.server_cert().spki_sha256_hex();

    let host = broker.wait_host("localhost", Duration::from_secs(15), |h| {
        h["trust"] == "pending"
    });
    assert_eq!(host["presented_pin"], first_pin.as_str());

    // Approving needs the admin token, and a pin that is not what the host presents is refused.
    let (status, _) = broker.post(
        "/v1/hosts/localhost/approve",
        None,
        &format!("{{\"pin\":\"{first_pin}\"}}"),
    );
    assert_eq!(status, 401);
    let (status, body) = broker.post(
        "/v1/hosts/localhost/approve",
        Some(&broker.token()),
        &format!("{{\"pin\":\"{}\"}}", "ab".repeat(32)),
    );
    assert_eq!(status, 409, "{body}");
    let out = common::approve_shown_pin(|args| broker.cli(args), "localhost");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pinned"));

    // kill -9 right after the approval: it must be on disk already.
    let mut broker = broker;
    broker.process.kill9();
    let broker = broker.restart();
    let host = broker.wait_host("localhost", Duration::from_secs(5), |_| true);
    assert_eq!(host["trust"], "pinned", "{host:#}");
    assert_eq!(host["pin"], first_pin.as_str());

    // Same CA, new key: the broker must raise `changed`.
    libvirtd
        .restart_with_server_cert(ServerCertSpec::localhost())
        .unwrap();
    let second_pin = libvirtd.server_cert().spki_sha256_hex();
    let host = broker.wait_host("localhost", Duration::from_secs(15), |h| {
        h["trust"] == "changed"
    });
    assert_eq!(host["presented_pin"], second_pin.as_str());
    assert_eq!(host["pin"], first_pin.as_str(), "the approved pin is kept");
    assert!(finding_kinds(&host).contains(&"changed".to_string()));
    let events = broker.get_json("/v1/events?host=localhost");
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "key_changed"),
        "{events:#}"
    );
    let metrics = broker.metrics();
    assert_eq!(
        sample(
            &metrics,
            "virtgate_host_trust",
            &[("host", "localhost"), ("state", "changed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "virtgate_cert_findings",
            &[("host", "localhost"), ("finding", "changed")]
        ),
        Some(1.0)
    );

    let out = broker.cli(&["hosts", "approve", "localhost", "--pin", &first_pin]);
    assert!(!out.status.success(), "approving the old pin must fail");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not match"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = broker.cli(&["hosts", "approve", "localhost", "--pin", &second_pin]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host = broker.wait_host("localhost", Duration::from_secs(5), |h| {
        h["trust"] == "pinned"
    });
    assert_eq!(host["pin"], second_pin.as_str());
    assert_eq!(
        sample(
            &broker.metrics(),
            "virtgate_cert_findings",
            &[("host", "localhost"), ("finding", "changed")]
        ),
        None
    );
}

#[test]
fn forgetting_a_host_removes_its_rows_and_series() {
    let libvirtd = libvirtd_with(ServerCertSpec::localhost());
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        dir.path(),
        &format!(
            "first_sight = \"tofu\"\n{}",
            static_host("localhost", libvirtd.port())
        ),
    );
    let host = broker.wait_host("localhost", Duration::from_secs(15), probed);
    assert_eq!(host["trust"], "pinned", "tofu pins the first key");
    assert!(broker.metrics().contains("host=\"localhost\""));

    let out = broker.cli(&["hosts", "forget", "localhost"]);

    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(broker.get("/v1/hosts/localhost").0, 404);
    assert!(
        !broker.metrics().contains("host=\"localhost\""),
        "no stale series after forget"
    );
    let hosts = broker.cli(&["hosts"]);
    assert!(
        String::from_utf8_lossy(&hosts.stdout).contains("no hosts"),
        "{}",
        String::from_utf8_lossy(&hosts.stdout)
    );
}

#[test]
fn an_unreachable_host_is_down_with_a_reason_and_the_broker_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let broker = Broker::start(dir.path(), &static_host("nothing-listens", port));

    let host = broker.wait_host("nothing-listens", Duration::from_secs(15), |h| {
        h["state"] == "down"
    });

    assert_eq!(host["endpoints"][0]["error_reason"], "refused");
    let metrics = broker.metrics();
    assert!(
        sample(
            &metrics,
            "virtgate_probe_errors_total",
            &[("reason", "refused")]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        sample(&metrics, "virtgate_host_up", &[("host", "nothing-listens")]),
        Some(0.0)
    );
    // Garbage on the API port is answered or dropped, never fatal.
    let _ = common::http(broker.addr, "BREW", "/%%%", None, Some("\u{0}\u{1}"));
    assert_eq!(broker.get("/healthz").0, 200);
    assert_eq!(broker.get("/v1/nope").0, 404);
    assert_eq!(broker.post("/v1/hosts", None, "").0, 405);
}

#[test]
fn watch_answers_as_soon_as_the_inventory_changes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        dir.path(),
        &static_host("nothing-listens", common::free_port()),
    );
    broker.wait_host("nothing-listens", Duration::from_secs(15), |h| {
        h["state"] == "down"
    });
    let now = broker.get_json("/v1/watch?since=0");
    let revision = now["revision"].as_u64().unwrap();
    assert_eq!(now["hosts"].as_array().unwrap().len(), 1);

    let addr = broker.addr;
    let waiter = std::thread::spawn(move || {
        common::http(
            addr,
            "GET",
            &format!("/v1/watch?since={revision}&timeout=60s"),
            None,
            None,
        )
        .unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    let (status, _) = broker.post(
        "/v1/hosts/nothing-listens/forget",
        Some(&broker.token()),
        "",
    );
    assert_eq!(status, 200);

    let (status, body) = waiter.join().unwrap();
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200);
    assert!(
        answer["revision"].as_u64().unwrap() > revision,
        "woken by the change, not the timeout: {answer}"
    );
    assert!(answer["hosts"].as_array().unwrap().is_empty());
}

#[test]
fn every_endpoint_in_the_openapi_file_is_served() {
    let spec: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml"))
            .unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &static_host("h1", common::free_port()));
    broker.wait_host("h1", Duration::from_secs(15), |h| h["state"] == "down");
    let token = broker.token();
    let paths = spec["paths"].as_mapping().unwrap();
    assert!(paths.len() >= 10, "{} paths documented", paths.len());
    for (path, methods) in paths {
        let path = path
            .as_str()
            .unwrap()
            .replace("{name}", "h1")
            .replace("{id}", "0a1b2c3d");
        for (method, _) in methods.as_mapping().unwrap() {
            let method = method.as_str().unwrap().to_uppercase();
            if path.ends_with("/forget") {
                continue; // would remove the host the other paths need; covered by its own test
            }
            let body = if path.ends_with("/approve") {
                "{\"pin\":\"00\"}"
            } else {
                ""
            };
            let (status, text) = common::http(
                broker.addr,
                &method,
                &format!("{path}?timeout=1s"),
                Some(&token),
                Some(body),
            )
            .unwrap();
            // 404 for a missing thing (a token id no one issued, no user h1, no credentials) is
            // an answer of the endpoint; an unrouted path says "no such endpoint".
            let unrouted = status == 404 && text.contains("no such endpoint");
            assert!(
                !unrouted && status != 405 && status != 0,
                "{method} {path} → {status}: {text}"
            );
        }
    }
}

#[test]
fn probes_present_the_configured_client_identity_which_libvirtd_accepts() {
    let with_identity = libvirtd_with(ServerCertSpec::localhost());
    let without_identity = libvirtd_with(ServerCertSpec::localhost());
    let pki = with_identity.client_pki_dir();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        dir.path(),
        &format!(
            "client_cert_file = {:?}\nclient_key_file = {:?}\n{}",
            pki.join("clientcert.pem").display().to_string(),
            pki.join("clientkey.pem").display().to_string(),
            static_host("localhost", with_identity.port()),
        ),
    );
    broker.wait_host("localhost", Duration::from_secs(15), probed);
    let other_dir = tempfile::tempdir().unwrap();
    let anonymous = Broker::start(
        other_dir.path(),
        &static_host("localhost", without_identity.port()),
    );
    anonymous.wait_host("localhost", Duration::from_secs(15), probed);
    std::thread::sleep(Duration::from_millis(300)); // let libvirtd write its log

    let refused = "Failed to verify peer's certificate";
    assert!(
        without_identity.log_text().contains(refused),
        "an anonymous probe is refused after the handshake"
    );
    assert!(
        !with_identity.log_text().contains(refused),
        "the client identity was accepted:\n{}",
        with_identity.log_text()
    );
    let metrics = broker.metrics();
    assert!(
        sample(
            &metrics,
            "virtgate_cert_not_after_timestamp_seconds",
            &[("host", "virtgate"), ("role", "proxy_client")]
        )
        .is_some(),
        "the client identity's expiry is exported"
    );
}

#[test]
#[allow(clippy::too_many_lines)] // one table of who may do what, read top to bottom
fn reads_beyond_loopback_need_a_proxy_certificate_or_a_token_and_changes_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let cert = BrokerCert::new(dir.path());
    // Proxies present backend identities from their own CA; another CA's are refused.
    let proxies = virtgate_testlab::pki::Ca::new("proxies").unwrap();
    let rogue = virtgate_testlab::pki::Ca::new("rogue").unwrap();
    let proxies_file = dir.path().join("proxies-ca.pem");
    std::fs::write(&proxies_file, proxies.cert_pem()).unwrap();
    let identity = |ca: &virtgate_testlab::pki::Ca, name: &str| {
        let issued = ca
            .issue_client(&ClientCertSpec::new("O=virtgate,CN=gateway"))
            .unwrap();
        let pki = dir.path().join(name);
        issued.write_client_files(&pki, ca.cert_pem()).unwrap();
        (pki.join("clientcert.pem"), pki.join("clientkey.pem"))
    };
    let (proxy_cert, proxy_key) = identity(&proxies, "proxy");
    let (rogue_cert, rogue_key) = identity(&rogue, "rogue");
    let read_token_file = dir.path().join("read.token");
    let broker = Broker::start_beyond_loopback(
        dir.path(),
        &cert,
        &format!(
            "proxy_ca_files = [{:?}]\nread_token_file = {:?}\n{}",
            proxies_file.display().to_string(),
            read_token_file.display().to_string(),
            static_host("h1", common::free_port()),
        ),
    );
    assert_eq!(
        std::fs::metadata(&read_token_file)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600,
        "the read token is generated 0600"
    );
    let read_token = std::fs::read_to_string(&read_token_file)
        .unwrap()
        .trim()
        .to_string();
    let admin_token = broker.token();
    let anonymous = common::tls_client(&cert.ca_file, None);
    let certified = common::tls_client(&cert.ca_file, Some((&proxy_cert, &proxy_key)));
    let rogue_tls = common::tls_client(&cert.ca_file, Some((&rogue_cert, &rogue_key)));
    let https = |tls, method: &str, path: &str, token: Option<&str>| {
        common::https(broker.addr, tls, method, path, token, Some(""))
    };

    for path in [
        "/v1/hosts",
        "/v1/hosts/h1",
        "/v1/certificates",
        "/v1/events",
        "/v1/watch?timeout=1s",
    ] {
        let (status, body) = https(&anonymous, "GET", path, None).unwrap();
        assert_eq!(status, 401, "GET {path} without credentials: {body}");
        assert!(
            body.contains("broker.proxy_ca_files") && body.contains("read token"),
            "the refusal says what to present: {body}"
        );
        assert_eq!(
            https(&anonymous, "GET", path, Some("not-the-token"))
                .unwrap()
                .0,
            401,
            "GET {path} with a wrong token"
        );
        for (who, tls, token) in [
            ("the read token", &anonymous, Some(read_token.as_str())),
            ("the admin token", &anonymous, Some(admin_token.as_str())),
            ("a proxy certificate", &certified, None),
        ] {
            let (status, body) = https(tls, "GET", path, token).unwrap();
            assert_eq!(status, 200, "GET {path} with {who}: {body}");
        }
        assert!(
            https(&rogue_tls, "GET", path, Some(&read_token)).is_err(),
            "a certificate from another CA fails the handshake"
        );
    }
    for open in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(
            https(&anonymous, "GET", open, None).unwrap().0,
            200,
            "{open} stays open for Prometheus"
        );
    }
    // Changing the inventory takes the admin token, whatever else the caller presents.
    for (who, tls, token) in [
        ("the read token", &anonymous, Some(read_token.as_str())),
        ("a proxy certificate", &certified, None),
    ] {
        let (status, body) = https(tls, "POST", "/v1/hosts/h1/forget", token).unwrap();
        assert_eq!(status, 401, "forget with {who}: {body}");
    }
    assert!(
        !common::http(broker.addr, "GET", "/metrics", None, None).is_ok_and(|(s, _)| s == 200),
        "no plain HTTP on the TLS listener"
    );
    let (status, body) = https(
        &anonymous,
        "POST",
        "/v1/hosts/h1/forget",
        Some(&admin_token),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        !broker.process.stderr_text().contains(&read_token)
            && !broker.process.stderr_text().contains(&admin_token),
        "tokens are never logged"
    );
}

#[test]
fn a_broker_told_to_listen_beyond_loopback_without_tls_refuses_to_start_and_says_how() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("virtgate.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\ndata_dir = {:?}\nlisten = \"0.0.0.0:{}\"\ndiscovery = false\n",
            dir.path().join("data").display().to_string(),
            common::free_port()
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(common::VIRTGATE);
    cmd.args(["--config", config.to_str().unwrap(), "broker"]);
    let mut broker = virtgate_testlab::LabProcess::spawn(cmd).unwrap();
    let status = broker.wait_timeout(Duration::from_secs(10));
    let stderr = broker.stderr_text();
    assert!(
        status.is_some_and(|s| !s.success()),
        "the broker must not serve plain HTTP beyond loopback; it is running: {stderr}"
    );
    assert!(
        stderr.contains("broker.tls_cert_file")
            && stderr.contains("virtgate up")
            && stderr.contains("127.0.0.1"),
        "{stderr}"
    );
}

#[test]
fn idle_watches_have_their_own_pool_so_approvals_and_metrics_still_answer_at_once() {
    let h1 = libvirtd_with(ServerCertSpec::localhost());
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &static_host("localhost", h1.port()));
    broker.wait_host("localhost", Duration::from_secs(15), |h| {
        h["trust"] == "pending"
    });
    // 256 watches that would never be woken (the review's M5): as many as the old global limit.
    let watch = format!(
        "GET /v1/watch?since={}&timeout=60s HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        u64::MAX,
        broker.addr
    );
    let mut watchers: Vec<std::net::TcpStream> = (0..256)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(broker.addr).unwrap();
            s.write_all(watch.as_bytes()).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));

    // Each request must be answered within two seconds.
    let timed = |method: &str, path: &str, token: Option<&str>| {
        let started = std::time::Instant::now();
        let answer = common::http_within(
            broker.addr,
            Duration::from_secs(2),
            method,
            path,
            token,
            Some(""),
        );
        (answer, started.elapsed())
    };
    let (metrics, took) = timed("GET", "/metrics", None);
    assert_eq!(
        metrics.as_ref().map(|(s, _)| *s).ok(),
        Some(200),
        "/metrics with 256 watches open: {metrics:?} after {took:?}"
    );
    let (hosts, took) = timed("GET", "/v1/hosts", None);
    assert_eq!(hosts.map(|(s, _)| s).ok(), Some(200), "{took:?}");
    let (extra, took) = timed("GET", "/v1/watch?timeout=60s", None);
    let (status, body) = extra.expect("a watch beyond the pool is answered at once");
    assert!(
        status == 503 && body.contains("broker.max_watchers"),
        "{status} {body} after {took:?}"
    );
    let approve = format!("{{\"pin\":\"{}\"}}", h1.server_cert().spki_sha256_hex());
    let started = std::time::Instant::now();
    let approved = common::http_within(
        broker.addr,
        Duration::from_secs(2),
        "POST",
        "/v1/hosts/localhost/approve",
        Some(&broker.token()),
        Some(&approve),
    );
    assert_eq!(
        approved.as_ref().map(|(s, _)| *s).ok(),
        Some(200),
        "approve with 256 watches open: {approved:?} after {:?}",
        started.elapsed()
    );

    // The pool holds 64 (broker.max_watchers' default), still waiting; the rest were told at
    // once to come back later.
    let (mut refused, mut waiting) = (0, 0);
    for s in &mut watchers {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut head = [0u8; 12];
        match s.read_exact(&mut head) {
            Ok(()) if &head[9..12] == b"503" => refused += 1,
            Ok(()) => panic!("a watch answered: {}", String::from_utf8_lossy(&head)),
            Err(_) => waiting += 1,
        }
    }
    assert_eq!((refused, waiting), (192, 64));
}

#[test]
fn the_watch_answers_at_once_when_the_follower_names_an_epoch_of_another_broker_start() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        dir.path(),
        &static_host("nothing-listens", common::free_port()),
    );
    let first = broker.get_json("/v1/watch?since=0");
    let epoch = first["epoch"].as_str().expect("an epoch").to_string();
    assert!(
        epoch.len() == 32 && epoch.chars().all(|c| c.is_ascii_hexdigit()),
        "128 random bits in hex: {epoch:?}"
    );
    let revision = first["revision"].as_u64().unwrap();

    // Same epoch, nothing new: the watch waits for its timeout.
    let started = std::time::Instant::now();
    let same = broker.get_json(&format!(
        "/v1/watch?since={}&epoch={epoch}&timeout=2s",
        u64::MAX
    ));
    assert!(started.elapsed() >= Duration::from_millis(1900));
    assert_eq!(same["epoch"], epoch.as_str());

    // Another epoch: answered at once, whatever `since` says.
    let started = std::time::Instant::now();
    let other = broker.get_json(&format!(
        "/v1/watch?since={}&epoch=0123456789abcdef0123456789abcdef&timeout=30s",
        u64::MAX
    ));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(other["epoch"], epoch.as_str());
    assert!(other["revision"].as_u64().unwrap() >= revision);

    let broker = broker.restart();
    let after = broker.get_json("/v1/watch?since=0");
    assert_ne!(after["epoch"], epoch.as_str(), "a new epoch per start");
}

#[test]
fn a_path_with_a_broken_escape_before_a_multibyte_character_gets_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "");
    // `%a` followed by `é` (two bytes): decoding used to slice inside the character and panic.
    let (status, body) = broker.get("/v1/hosts/%a\u{e9}");
    assert_eq!(status, 404, "{body}");
    let (status, body) = broker.get("/v1/events?host=%a\u{e9}");
    assert_eq!(status, 200, "{body}");
    assert!(
        !broker.process.stderr_text().contains("panicked"),
        "{}",
        broker.process.stderr_text()
    );
}
