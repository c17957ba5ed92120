//! `virtgate agent` in front of a real libvirtd's UNIX socket, enrolled by `virtgate up` with a
//! pasted one-time command, reached by real virsh and python3-libvirt through the gateway. On
//! loopback: the broker finds the agent by `--address` (`agent_lab.rs` does it over mDNS in a
//! namespace lab).
#![allow(clippy::disallowed_types)] // synchronous test code: std's clock is the right one

mod common;

use std::time::Duration;

use common::agent::{enroll, enroll_cli, token_state, Agent};
use common::gateway::{
    assert_same_results_as_direct, identity, text, up_api_ca, virsh, CallOnCue, Gateway, ProxySetup,
};
use common::sample;
use common::tap::UnixTap;
use virtgate_testlab::libvirtd::{Libvirtd, LibvirtdOptions};

const RULES: &str = r#"
[[proxy.rules]]
identity = "*CN=alice"
hosts = ["*"]
mode = "rw"
[[proxy.rules]]
identity = "*CN=bob"
hosts = ["h1"]
mode = "ro"
"#;

fn libvirtd() -> Libvirtd {
    Libvirtd::start(LibvirtdOptions::default()).unwrap()
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
fn an_enrolled_agent_gives_virsh_and_python_the_same_results_as_libvirtd_directly() {
    let libvirtd = libvirtd();
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &libvirtd, RULES);
    let mut agent = Agent::new(dir.path(), &libvirtd);
    let enrollment = agent.enroll_and_start(&gw, "h1");
    assert_eq!(token_state(&gw, &enrollment.id).0, "spent");

    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    let via = gw.uri("127.0.0.1", "h1", &alice);
    assert_same_results_as_direct(&libvirtd, &via, dir.path(), &|| {
        format!("gateway:\n{}", gw.process.stderr_text())
    });

    // Lifecycle events reach an event loop through gateway and agent.
    let mut cmd = std::process::Command::new("/usr/bin/virsh");
    cmd.args(["-c", &via, "event", "--all", "--loop"]);
    let events = virtgate_testlab::LabProcess::spawn(cmd).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(libvirtd
        .virsh(&["suspend", "test"])
        .unwrap()
        .status
        .success());
    events
        .wait_for_line(Duration::from_secs(10), |l| {
            l.contains("lifecycle") && l.contains("Suspended")
        })
        .expect("suspend event relayed");
    assert!(libvirtd
        .virsh(&["resume", "test"])
        .unwrap()
        .status
        .success());
    drop(events);

    // A read-only identity reads and is refused writes.
    let bob = identity(&libvirtd, "bob", "C=GB,O=virtgate-test,CN=bob");
    let ro = gw.uri("127.0.0.1", "h1", &bob);
    assert!(virsh(&ro, &["list", "--all"]).status.success());
    let write = virsh(&ro, &["suspend test; domstate test"]);
    assert!(
        text(&write).contains("read only access prevents virDomainSuspend"),
        "{}",
        text(&write)
    );

    let metrics = gw.metrics();
    let ok = sample(
        &metrics,
        "virtgate_proxy_secondary_checks_total",
        &[("host", "h1"), ("result", "ok")],
    )
    .unwrap_or_default();
    assert!(
        ok >= 8.0,
        "every connection made the agent check: {ok}\n{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "virtgate_proxy_secondary_checks_total",
            &[("host", "h1"), ("result", "failed")]
        ),
        Some(0.0)
    );
    assert!(metrics.contains("virtgate_host_trust{host=\"h1\",state=\"enrolled\"} 1"));
    let own = agent.metrics();
    assert!(
        sample(&own, "virtgate_agent_checks_total", &[("result", "ok")]).unwrap_or_default() >= 8.0,
        "{own}"
    );
    assert!(
        sample(
            &own,
            "virtgate_agent_connections_total",
            &[("result", "relayed")]
        )
        .unwrap_or_default()
            >= 1.0
    );
}

/// Runs the pasted command with `token` instead of the printed one; returns (exit ok, output).
fn enroll_with(agent: &Agent, command: &[String], token: &str) -> (bool, String) {
    let command: Vec<String> = command
        .iter()
        .map(|a| {
            if a.contains('.') && a.len() == 41 {
                token.to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    let (ok, stdout, stderr) = agent.run_enrollment(&command, Duration::from_secs(30));
    (ok, format!("{stdout}\n{stderr}"))
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario per kind of bad token, read top to bottom
fn wrong_revoked_expired_and_reused_tokens_fail_clearly_on_both_sides_and_pin_nothing() {
    let libvirtd = libvirtd();
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &libvirtd, RULES);
    let mut agent = Agent::new(dir.path(), &libvirtd);
    // The host side: every connection libvirtd is offered goes through this tap.
    let libvirt = UnixTap::start(&dir.path().join("libvirt-tap.sock"), &agent.socket);
    agent.socket = libvirt.path.clone();
    let addr = agent.address();

    // A token typed wrong: same id, another secret.
    let first = enroll(&gw, "h1", &addr, "10m");
    let wrong = format!("{}.{}", first.id, "0".repeat(32));
    let (ok, out) = enroll_with(&agent, &first.command, &wrong);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("could not prove it issued token {}", first.id))
            && out.contains("paste the command `virtgate enroll` printed again"),
        "the agent says what is wrong: {out}"
    );
    let (state, detail) = token_state(&gw, &first.id);
    assert_eq!(state, "pending", "a wrong attempt does not spend the token");
    assert!(
        detail.contains("did not prove the token"),
        "the broker says it too: {detail}"
    );

    // Revoked.
    let revoked = enroll_cli(&gw, &["--revoke", &first.id]);
    assert!(revoked.status.success(), "{}", text(&revoked));
    let (ok, out) = enroll_with(&agent, &first.command, &first.token);
    assert!(!ok);
    assert!(
        out.contains(&format!("token {} was revoked", first.id))
            && out.contains("`virtgate enroll h1`"),
        "{out}"
    );

    // Expired.
    let short = enroll(&gw, "h1", &addr, "1s");
    std::thread::sleep(Duration::from_millis(2100));
    let (ok, out) = enroll_with(&agent, &short.command, &short.token);
    assert!(!ok);
    assert!(
        out.contains(&format!("token {} expired", short.id)),
        "{out}"
    );
    assert_eq!(token_state(&gw, &short.id).0, "expired");

    // Nothing was pinned by any of them, on either side, and libvirtd saw nothing.
    let host = gw.get("/v1/hosts/h1").unwrap();
    assert!(
        host.0 == 404 || !host.1.contains("\"enrolled\""),
        "{host:?}"
    );
    assert!(
        !agent.state_dir.join("enrollment.json").exists(),
        "the agent stored no enrollment"
    );
    assert_eq!(libvirt.accepted(), 0, "no connection reached libvirtd");

    // A wrong --gateway-pin: the agent refuses the broker's key in the TLS handshake, before
    // any PAKE message, and waits on.
    let pinned = enroll(&gw, "h1", &addr, "10m");
    let mut command = pinned.command.clone();
    let at = command.iter().position(|a| a == "--gateway-pin").unwrap();
    command[at + 1] = format!("sha256:{}", "ab".repeat(32));
    let mut waiting = agent.spawn(&command);
    waiting
        .wait_for_stderr("refused before any PAKE message", Duration::from_secs(15))
        .unwrap_or_else(|_| panic!("agent log:\n{}", waiting.stderr_text()));
    assert!(
        !waiting.stderr_text().contains("check"),
        "{}",
        waiting.stderr_text()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !token_state(&gw, &pinned.id)
        .1
        .contains("refused the broker's key")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            token_state(&gw, &pinned.id)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        waiting.is_running(),
        "a wrong key is not the end: the right broker may still come"
    );
    waiting.stop(Duration::from_secs(2));

    assert_eq!(libvirt.accepted(), 0, "no connection reached libvirtd");

    // The right command enrolls; the same command again is told the token was used.
    let (ok, out) = enroll_with(&agent, &pinned.command, &pinned.token);
    assert!(ok, "{out}\n{}", gw.process.stderr_text());
    gw.wait_trust("h1", "enrolled");
    let (ok, out) = enroll_with(&agent, &pinned.command, &pinned.token);
    assert!(!ok);
    assert!(
        out.contains(&format!("token {} was used already", pinned.id)),
        "{out}"
    );
}

#[test]
fn an_agent_killed_mid_call_gives_the_client_an_error_and_comes_back_with_its_key_still_enrolled() {
    let libvirtd = libvirtd();
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &libvirtd, RULES);
    let mut agent = Agent::new(dir.path(), &libvirtd);
    agent.enroll_and_start(&gw, "h1");
    let pin_before = host_pin(&gw);
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    let mut client = CallOnCue::open(&gw.uri("127.0.0.1", "h1", &alice));

    // The agent freezes (every thread stopped) before the call is sent, then dies with the
    // call in flight.
    let process = agent.process.as_mut().unwrap();
    process.freeze(Duration::from_secs(10));
    client.call();
    std::thread::sleep(Duration::from_millis(500));
    process.kill9();
    let rest = client.outcome();
    assert!(
        rest.contains("virtgate: host h1 closed the connection while this call was in progress"),
        "{rest}"
    );

    // Restarted: the same key, still enrolled, serving at once.
    agent.process = None;
    agent.start();
    assert_eq!(host_pin(&gw), pin_before);
    gw.wait_trust("h1", "enrolled");
    let listed = virsh(&gw.uri("127.0.0.1", "h1", &alice), &["list", "--all"]);
    assert!(listed.status.success(), "{}", text(&listed));
}

/// How many of the agent's connections ended `result` so far.
fn agent_connections(agent: &Agent, result: &str) -> f64 {
    sample(
        &agent.metrics(),
        "virtgate_agent_connections_total",
        &[("result", result)],
    )
    .unwrap_or_default()
}

/// Sets `broker.agent_gateway_pins` in `up`'s configuration file to `pins`.
fn set_agent_gateway_pins(gw: &Gateway, pins: &[String]) {
    let config = std::fs::read_to_string(&gw.config).unwrap();
    let kept: Vec<&str> = config
        .lines()
        .filter(|l| !l.starts_with("agent_gateway_pins"))
        .collect();
    let listed: Vec<String> = pins.iter().map(|p| format!("{p:?}")).collect();
    let config = kept.join("\n").replacen(
        "[proxy]",
        &format!("agent_gateway_pins = [{}]\n[proxy]", listed.join(", ")),
        1,
    );
    std::fs::write(&gw.config, config).unwrap();
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
fn a_second_gateway_replica_is_added_and_retired_by_rotation_without_re_enrolling() {
    let libvirtd = libvirtd();
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start(dir.path(), &libvirtd, RULES);
    let mut agent = Agent::new(dir.path(), &libvirtd);
    agent.enroll_and_start(&gw, "h1");
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");

    // Replica B follows the broker of `up` and reads the host secrets from the broker's
    // directory (as a mounted Secret would give them), with a backend key of its own.
    let backend = libvirtd
        .issue_client_pki_dir(
            "replica-backend",
            &virtgate_testlab::pki::ClientCertSpec::new("O=virtgate-test,CN=gateway"),
        )
        .unwrap();
    let b_cert = backend.join("clientcert.pem");
    let b_pin = {
        let certs = virtgate_pki::read_certs(&b_cert).unwrap();
        format!("sha256:{}", virtgate_pki::spki_pin(&certs[0]).unwrap())
    };
    let secrets = gw.data_dir.join("agent-secrets");
    let replica = ProxySetup::write(
        dir.path(),
        "replica",
        &libvirtd,
        Some((b_cert, backend.join("clientkey.pem"))),
        &format!(
            "agent_secret_dir = {:?}\n{RULES}",
            secrets.display().to_string()
        ),
    );
    let api = format!("https://{}", gw.api);
    let api_ca = up_api_ca(&gw.data_dir).display().to_string();
    let mut b = replica.start(&["--broker", &api, "--broker-ca", &api_ca]);
    let via_b = replica.uri("h1", &alice);
    let via_a = gw.uri("127.0.0.1", "h1", &alice);

    // Not among the agent's gateway keys yet: refused at the agent's TLS handshake, with a
    // message that says how to add it, and libvirt never reached.
    let relayed = agent_connections(&agent, "relayed");
    let refused = virsh(&via_b, &["list", "--all"]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains(
            "virtgate: host h1 failed the agent check: the agent refused the gateway's key"
        ) && text(&refused).contains("broker.agent_gateway_pins"),
        "{}\nreplica:\n{}",
        text(&refused),
        b.stderr_text()
    );
    assert_eq!(agent_connections(&agent, "relayed"), relayed);
    assert!(agent_connections(&agent, "tls_failed") >= 1.0);

    // Added: listed in broker.agent_gateway_pins, then one rotation tells the agent.
    set_agent_gateway_pins(&gw, std::slice::from_ref(&b_pin));
    gw.restart();
    let rotated = enroll_cli(&gw, &["--rotate", "h1"]);
    assert!(rotated.status.success(), "{}", text(&rotated));
    assert!(
        String::from_utf8_lossy(&rotated.stdout).contains(
            "rotated: h1 now proves secret generation 2; its agent accepts 2 gateway key(s)"
        ),
        "{}",
        text(&rotated)
    );
    assert_eq!(
        sample(&agent.metrics(), "virtgate_agent_secret_generation", &[]),
        Some(2.0)
    );
    for via in [&via_a, &via_b] {
        let listed = virsh(via, &["list", "--all"]);
        assert!(
            listed.status.success() && text(&listed).contains("test"),
            "{via}: {}\nreplica:\n{}",
            text(&listed),
            b.stderr_text()
        );
    }

    // Retired: taken out of the list, and the next rotation leaves it out; `up` keeps working.
    set_agent_gateway_pins(&gw, &[]);
    gw.restart();
    let rotated = enroll_cli(&gw, &["--rotate", "h1"]);
    assert!(
        String::from_utf8_lossy(&rotated.stdout).contains(
            "rotated: h1 now proves secret generation 3; its agent accepts 1 gateway key(s)"
        ),
        "{}",
        text(&rotated)
    );
    let relayed = agent_connections(&agent, "relayed");
    let refused = virsh(&via_b, &["list", "--all"]);
    assert!(
        !refused.status.success() && text(&refused).contains("refused the gateway's key"),
        "{}",
        text(&refused)
    );
    assert_eq!(agent_connections(&agent, "relayed"), relayed);
    let listed = virsh(&via_a, &["list", "--all"]);
    assert!(listed.status.success(), "{}", text(&listed));
    b.stop(Duration::from_secs(5));
}

fn host_pin(gw: &Gateway) -> String {
    let (_, body) = gw.get("/v1/hosts/h1").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["host"]["pin"].as_str().unwrap().to_string()
}
