//! Configuration layering and errors, through the real binary (`virtgate config`).

use std::process::{Command, Output};

const VIRTGATE: &str = env!("CARGO_BIN_EXE_virtgate");

fn config(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(VIRTGATE);
    cmd.args(args).arg("config").env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("VIRTGATE_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run virtgate config")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn port_of(text: &str) -> i64 {
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let value: toml::Value = toml::from_str(&body).expect("virtgate config prints TOML");
    value["advertise"]["port"].as_integer().unwrap()
}

#[test]
fn defaults_then_file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("virtgate.toml");
    std::fs::write(&file, "[advertise]\nport = 1001\n").unwrap();
    let file = file.to_str().unwrap();

    assert_eq!(
        port_of(&stdout(&config(&[], &[]))),
        16514,
        "built-in default"
    );
    assert_eq!(
        port_of(&stdout(&config(&["--config", file], &[]))),
        1001,
        "file beats default"
    );
    let env = [("VIRTGATE_ADVERTISE__PORT", "1002")];
    assert_eq!(
        port_of(&stdout(&config(&["--config", file], &env))),
        1002,
        "environment beats file"
    );
}

#[test]
fn flags_beat_the_environment() {
    let out = config(
        &["--log-format", "json"],
        &[("VIRTGATE_LOG__FORMAT", "text")],
    );
    assert!(stdout(&out).contains("format = \"json\""));
}

#[test]
fn an_unknown_key_is_an_error_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.toml");
    std::fs::write(&file, "[discovery]\nverify_intervall = \"5s\"\n").unwrap();

    let out = config(&["--config", file.to_str().unwrap()], &[]);

    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("discovery.verify_intervall"), "{err}");
    assert!(err.contains("typo.toml"), "{err}");
}

#[test]
fn a_bad_value_from_the_environment_names_the_key_and_the_variable() {
    let out = config(&[], &[("VIRTGATE_ADVERTISE__PORT", "not-a-port")]);

    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("advertise.port") && err.contains("VIRTGATE_"),
        "{err}"
    );
}

#[test]
fn a_missing_config_file_is_an_error_saying_what_to_do() {
    let out = config(&["--config", "/nonexistent/virtgate.toml"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("/nonexistent/virtgate.toml") && err.contains("--config"),
        "{err}"
    );
}

#[test]
fn unrelated_variables_with_the_prefix_are_ignored_but_typos_in_a_section_are_not() {
    let out = config(
        &[],
        &[
            ("VIRTGATE_BIN", "/usr/bin/virtgate"),
            ("VIRTGATE_TOKEN", "x"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = config(&[], &[("VIRTGATE_BROKER__LISTN", "127.0.0.1:1")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("broker.listn"));
}

#[test]
fn every_missing_file_and_half_set_pair_is_reported_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("virtgate.toml");
    std::fs::write(
        &file,
        "[proxy]\nserver_cert_file = \"/nonexistent/server.pem\"\ncrl_file = \"/nonexistent/crl.pem\"\n\
         [broker]\ntrusted_ca_files = [\"/nonexistent/ca.pem\"]\n",
    )
    .unwrap();
    let out = config(&["--config", file.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for expected in [
        "proxy.server_cert_file: /nonexistent/server.pem is not a readable file",
        "proxy.crl_file: /nonexistent/crl.pem",
        "proxy.server_cert_file / proxy.server_key_file: set both or neither",
        "broker.trusted_ca_files: /nonexistent/ca.pem",
    ] {
        assert!(err.contains(expected), "{expected:?} missing from:\n{err}");
    }
}

#[test]
fn configuration_errors_are_in_words_with_an_example_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    let cases: &[(&str, &str)] = &[
        ("[advertise]\nport = 70000\n", "advertise.port"),
        (
            "[broker]\nlisten = \"localhost:80\"\n",
            "e.g. 127.0.0.1:16580",
        ),
        (
            "[advertise]\nportt = 1\n",
            "advertise takes: hostname, port",
        ),
        ("[advertise\n", "is not valid TOML"),
        (
            "[proxy]\nlisten = \"localhost:1\"\n",
            "write HOST:PORT with an IP address",
        ),
        ("[proxy]\nlisten = [\"localhost:1\"]\n", "proxy.listen.0 in"),
    ];
    for (toml, expected) in cases {
        std::fs::write(&file, toml).unwrap();
        let out = config(&["--config", file.to_str().unwrap()], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml}: {err}");
        assert!(err.contains(expected), "{toml}: {err}");
        assert!(
            !err.contains("``") && !err.contains("u16") && !err.contains("(top level)"),
            "no nested backticks, Rust types or figment words: {err}"
        );
    }
    let out = config(&["--log-filter", "info,,=bad["], &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = config(&[], &[("VIRTGATE_BROKR__LISTEN", "127.0.0.1:1")]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("VIRTGATE_BROKR__LISTEN is not read"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn one_gateway_address_needs_no_toml_array_in_the_environment() {
    let out = config(&[], &[("VIRTGATE_PROXY__LISTEN", "127.0.0.1:17514")]);
    let printed = stdout(&out);
    let body: String = printed
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let value: toml::Value = toml::from_str(&body).unwrap();
    assert_eq!(
        value["proxy"]["listen"],
        toml::Value::Array(vec!["127.0.0.1:17514".into()]),
        "{printed}"
    );
}
