//! The broker against real TLS peers: libvirtd (test driver) daemons on loopback, each with its
//! own throwaway PKI. The broker runs with `discovery = false` (no mDNS in the root namespace).

mod common;

use std::time::Duration;

use common::{sample, Broker};
use serde_json::Value;
use virtgate_testlab::libvirtd::{Libvirtd, LibvirtdOptions};
use virtgate_testlab::pki::ServerCertSpec;

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

    // `virtgate certs --expiring 30d` lists exactly the expiring certificate.
    let out = broker.cli(&["certs", "--expiring", "30d", "--json"]);
    assert!(
        out.status.success(),
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
    assert_eq!(all.len(), 3, "one leaf per host");
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
    let out = broker.cli(&["hosts", "approve", "localhost"]);
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
        let path = path.as_str().unwrap().replace("{name}", "h1");
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
            assert!(
                status != 404 && status != 405 && status != 0,
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
