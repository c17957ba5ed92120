//! The Grafana dashboards and Prometheus alert rules shipped in `dashboards/`: every
//! `dashboards/*.json` and every `dashboards/rules/*.yaml` with its `*.test.yaml`.
//!
//! No Grafana server can run here, so a dashboard is held to what can be proven without one: it
//! is well formed, each of its queries is PromQL that the Prometheus we test against accepts,
//! and it queries only series, labels and label values that virtgate exports. The alert rules
//! are checked and unit-tested by promtool. One test scrapes a real `virtgate up` (broker and
//! gateway) after a real virsh connection through it, and holds that list to the scrape.
//!
//! promtool comes with Debian's `prometheus` package, which ./scripts/test.sh installs. Without
//! it these tests fail rather than skip: a skipped check would let a broken rule file through.
#![allow(clippy::disallowed_types)] // synchronous test code: std's clock is the right one

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::convert::Infallible;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr, VectorSelector};
use promql_parser::util::{walk_expr, ExprVisitor};
use serde::Deserialize;
use serde_json::{json, Value as Json};

/// What the broker exports (issue 3) and with which labels. Prometheus adds `job` and
/// `instance` to each series when it scrapes.
const BROKER_EXPORTED: &[(&str, &[&str])] = &[
    ("virtgate_cert_not_after_timestamp_seconds", CERT_LABELS),
    ("virtgate_cert_not_before_timestamp_seconds", CERT_LABELS),
    ("virtgate_cert_findings", &["host", "finding"]),
    ("virtgate_hosts", &["state"]),
    ("virtgate_host_trust", &["host", "state"]),
    ("virtgate_host_up", &["host"]),
    ("virtgate_host_state", &["host", "state"]),
    ("virtgate_host_addresses", &["host", "result"]),
    ("virtgate_probe_duration_seconds_bucket", &["le"]),
    ("virtgate_probe_duration_seconds_sum", &[]),
    ("virtgate_probe_duration_seconds_count", &[]),
    ("virtgate_probe_errors_total", &["reason"]),
    ("virtgate_discovery_events_total", &["kind"]),
    ("virtgate_build_info", &["version"]),
];
/// What the gateway exports (issue 4): on the broker's `/metrics` in `virtgate up`, alone on
/// `proxy.metrics_listen` in `virtgate proxy`.
const PROXY_EXPORTED: &[(&str, &[&str])] = &[
    ("virtgate_proxy_connections_active", &[]),
    ("virtgate_proxy_connections_total", &["result"]),
    ("virtgate_proxy_handshake_duration_seconds_bucket", &["le"]),
    ("virtgate_proxy_handshake_duration_seconds_sum", &[]),
    ("virtgate_proxy_handshake_duration_seconds_count", &[]),
    ("virtgate_proxy_auth_failures_total", &["stage", "reason"]),
    (
        "virtgate_proxy_rpc_calls_total",
        &["host", "program", "procedure"],
    ),
    (
        "virtgate_proxy_rpc_duration_seconds_bucket",
        &["host", "le"],
    ),
    ("virtgate_proxy_rpc_duration_seconds_sum", &["host"]),
    ("virtgate_proxy_rpc_duration_seconds_count", &["host"]),
    ("virtgate_proxy_bytes_total", &["host", "direction"]),
    (
        "virtgate_proxy_backend_connect_duration_seconds_bucket",
        &["le"],
    ),
    ("virtgate_proxy_backend_connect_duration_seconds_sum", &[]),
    ("virtgate_proxy_backend_connect_duration_seconds_count", &[]),
    ("virtgate_proxy_protocol_errors_total", &["side", "reason"]),
    ("virtgate_proxy_calls_refused_total", &["reason"]),
    ("virtgate_proxy_crl_next_update_timestamp_seconds", &[]),
    ("virtgate_proxy_secondary_checks_total", &["host", "result"]),
    (
        "virtgate_proxy_secondary_check_duration_seconds_bucket",
        &["le"],
    ),
    ("virtgate_proxy_secondary_check_duration_seconds_sum", &[]),
    ("virtgate_proxy_secondary_check_duration_seconds_count", &[]),
];
/// What only `virtgate proxy` exports (issue 13): the freshness of its copy of the broker's
/// inventory. `virtgate up` reads the inventory in process, so its scrape below has none of
/// these; tests/proxy_tier.rs scrapes a `virtgate proxy` and holds this list to it.
const FOLLOWER_EXPORTED: &[(&str, &[&str])] = &[
    ("virtgate_proxy_directory_last_sync_timestamp_seconds", &[]),
    ("virtgate_proxy_directory_hosts", &[]),
    ("virtgate_proxy_broker_follow_errors_total", &[]),
];
const CERT_LABELS: &[&str] = &[
    "host",
    "address",
    "role",
    "subject_cn",
    "issuer_cn",
    "serial",
    "sha256",
];
const TARGET_LABELS: &[&str] = &["job", "instance"];
/// Series that Prometheus itself makes; their labels are not ours to check.
const PROMETHEUS_SERIES: &[&str] = &["up", "ALERTS", "ALERTS_FOR_STATE"];

/// Labels with a fixed set of values: (series, label, values, whether the scrape test must see
/// every one of them). A misspelt value in `{result="backend_unreachble"}` is valid PromQL that
/// matches nothing; the scrape test keeps these lists complete.
const LABEL_VALUES: &[(&str, &str, &[&str], bool)] = &[
    (
        "virtgate_host_state",
        "state",
        &["up", "down", "absent", "unknown"],
        false,
    ),
    (
        "virtgate_host_addresses",
        "result",
        &["ok", "failed"],
        false,
    ),
    (
        "virtgate_proxy_connections_total",
        "result",
        &[
            "closed",
            "tls_failed",
            "dn_not_allowed",
            "protocol_error",
            "denied",
            "unknown_host",
            "untrusted_host",
            "no_host",
            "backend_unreachable",
            "backend_rejected",
            "idle_timeout",
            "refused_capacity",
            "bad_uri",
            "open_failed",
            "call_refused",
            "revoked",
            "refused_source",
            "login_failed",
            "backend_login_failed",
        ],
        true,
    ),
    (
        "virtgate_proxy_calls_refused_total",
        "reason",
        &["reopen", "auth", "identity", "read_only", "program"],
        true,
    ),
    (
        "virtgate_proxy_auth_failures_total",
        "stage",
        &["tls", "dn", "policy", "sasl"],
        true,
    ),
    (
        "virtgate_proxy_auth_failures_total",
        "reason",
        &[
            "handshake_failed",
            "no_certificate",
            "bad_certificate",
            "revoked",
            "expired",
            "timeout",
            "not_allowed",
            "denied",
            "unknown_user",
            "wrong_password",
            "rate_limited",
            "bad_message",
            "no_login",
        ],
        false,
    ),
    (
        "virtgate_proxy_backend_login_failures_total",
        "reason",
        &[
            "no_credentials",
            "no_common_mechanism",
            "rejected",
            "bad_server_signature",
            "stale_credentials",
            "protocol",
        ],
        false,
    ),
    (
        "virtgate_proxy_secondary_checks_total",
        "result",
        &["ok", "failed", "refused", "no_secret", "error"],
        true,
    ),
    (
        "virtgate_proxy_bytes_total",
        "direction",
        &["to_host", "to_client"],
        true,
    ),
    (
        "virtgate_proxy_rpc_calls_total",
        "program",
        &["remote", "qemu", "lxc", "keepalive"],
        false,
    ),
    (
        "virtgate_proxy_protocol_errors_total",
        "side",
        &["client", "host"],
        true,
    ),
    (
        "virtgate_cert_not_after_timestamp_seconds",
        "role",
        CERT_ROLES,
        false,
    ),
    (
        "virtgate_cert_not_before_timestamp_seconds",
        "role",
        CERT_ROLES,
        false,
    ),
    (
        "virtgate_hosts",
        "state",
        &["unknown", "up", "down", "absent"],
        true,
    ),
    (
        "virtgate_host_trust",
        "state",
        &[
            "unknown",
            "pending",
            "trusted_ca",
            "pinned",
            "changed",
            "enrolled",
        ],
        false,
    ),
    (
        "virtgate_cert_findings",
        "finding",
        &[
            "expired",
            "not_yet_valid",
            "expiring_soon",
            "expiring_critical",
            "cn_only",
            "name_not_covered",
            "untrusted_chain",
            "self_signed",
            "weak_key",
            "weak_signature",
            "not_server_auth",
            "not_client_auth",
            "libvirt_key_usage",
            "changed",
            "bypassable",
        ],
        false,
    ),
];
const CERT_ROLES: &[&str] = &["host", "host_chain", "proxy_server", "proxy_client", "ca"];

/// Every rules file shipped, its groups, and its alerts with their severities. A new file or
/// alert is added here on purpose, not by accident.
const SHIPPED_ALERTS: &[ShippedRules] = &[
    (
        "rules/virtgate-certificates.yaml",
        &["virtgate-certificates"],
        &[
            ("VirtgateCertificateExpired", "critical"),
            ("VirtgateCertificateExpiringCritical", "critical"),
            ("VirtgateCertificateExpiringSoon", "warning"),
            ("VirtgateHostBypassable", "critical"),
            ("VirtgateHostKeyChanged", "critical"),
            ("VirtgateHostPendingApproval", "warning"),
            ("VirtgateProbesFailing", "warning"),
        ],
    ),
    (
        "rules/virtgate-proxy.yaml",
        &["virtgate-proxy"],
        &[
            ("VirtgateProxyAgentCheckFailed", "critical"),
            ("VirtgateProxyAgentCheckRefused", "warning"),
            ("VirtgateProxyAuthFailureSpike", "warning"),
            ("VirtgateProxyCertificateExpiring", "critical"),
            ("VirtgateProxyCallsRefused", "warning"),
            ("VirtgateProxyCertificateExpiring", "warning"),
            ("VirtgateProxyCrlStale", "warning"),
            ("VirtgateProxyDirectoryMissing", "warning"),
            ("VirtgateProxyDirectoryStale", "warning"),
            ("VirtgateProxyHostUnreachable", "critical"),
            ("VirtgateProxyHostUnreachable", "warning"),
            ("VirtgateProxyProtocolErrors", "warning"),
        ],
    ),
];

/// A rules file: its path under `dashboards/`, its groups, its (alert, severity) pairs.
type ShippedRules = (&'static str, &'static [&'static str], Severities);
type Severities = &'static [(&'static str, &'static str)];

/// Labels an alert may name its subject by: a host, or the gateway (scrape target) itself.
const WHERE_LABELS: &[&str] = &["host", "instance"];

// ---------------------------------------------------------------------------------------------
// Alert rules

#[test]
fn the_alert_rules_pass_promtool_check_with_every_lint() {
    for file in rule_files() {
        let out = promtool(
            &[
                "check".as_ref(),
                "rules".as_ref(),
                "--lint=all".as_ref(),
                "--lint-fatal".as_ref(),
                file.as_os_str(),
            ],
            None,
        );
        assert_success(&format!("promtool check rules {}", file.display()), &out);
    }
}

#[test]
fn every_rules_file_has_a_unit_test_file_that_loads_it_and_nothing_else() {
    let rules: BTreeSet<PathBuf> = rule_files().into_iter().collect();
    for tests in rule_test_files() {
        let name = tests.file_name().unwrap().to_str().unwrap();
        let rules_file = tests.with_file_name(name.replace(".test.yaml", ".yaml"));
        assert!(
            rules.contains(&rules_file),
            "{} tests {}, which does not exist",
            relative(&tests),
            relative(&rules_file)
        );
    }
    for path in &rules {
        let tests = test_file_of(path);
        assert!(
            tests.is_file(),
            "{} has no unit tests: add {}",
            relative(path),
            relative(&tests)
        );
        let file: RuleTestFile = read_yaml(&tests);
        let own = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            file.rule_files,
            [own],
            "{}: rule_files must be exactly its own rules file",
            relative(&tests)
        );
    }
}

#[test]
fn the_alert_rules_pass_their_promtool_unit_tests() {
    for path in rule_files() {
        let file = test_file_of(&path);
        let out = promtool(&["test".as_ref(), "rules".as_ref(), file.as_os_str()], None);
        assert_success(&format!("promtool test rules {}", file.display()), &out);
    }
}

#[test]
fn the_shipped_alerts_and_their_severities() {
    let shipped: Vec<String> = rule_files().iter().map(|p| relative(p)).collect();
    let expected: Vec<&str> = SHIPPED_ALERTS.iter().map(|(file, _, _)| *file).collect();
    assert_eq!(shipped, expected, "rules files in dashboards/rules");

    for (name, groups, alerts) in SHIPPED_ALERTS {
        let file: RuleFile = read_yaml(&dashboards_dir().join(name));
        let group_names: Vec<&str> = file.groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(group_names, *groups, "{name}: groups");

        let mut severities = BTreeSet::new();
        for rule in file.groups.iter().flat_map(|g| &g.rules) {
            let Some(alert) = rule.alert.as_deref() else {
                continue;
            };
            let severity = rule.labels.get("severity").map(String::as_str);
            let severity =
                severity.unwrap_or_else(|| panic!("{name}: alert {alert} has no severity label"));
            assert!(
                ["critical", "warning", "info"].contains(&severity),
                "{name}: alert {alert} has severity {severity:?}"
            );
            assert!(
                severities.insert((alert, severity)),
                "{name}: alert {alert} has two rules of severity {severity}"
            );
        }
        let expected: BTreeSet<(&str, &str)> = alerts.iter().copied().collect();
        assert_eq!(severities, expected, "{name}: alerts and severities");
    }
}

/// An alert names what is wrong where: a host, or the gateway (its `instance`) when the series
/// have no host. The templates must use the label, and the unit tests show them rendered.
#[test]
fn every_alert_names_the_host_or_gateway_in_its_summary_and_description() {
    for (file, rule) in alert_rules() {
        let alert = rule.alert.as_deref().unwrap();
        for key in ["summary", "description"] {
            let text = rule.annotations.get(key).map(String::as_str);
            assert!(
                text.is_some_and(|t| WHERE_LABELS
                    .iter()
                    .any(|l| t.contains(&format!("{{{{ $labels.{l} }}}}")))),
                "{file}: alert {alert} needs a {key} annotation that names \
                 {{{{ $labels.host }}}} or {{{{ $labels.instance }}}}, got {text:?}"
            );
        }
    }
    for (file, case) in alert_test_cases() {
        for expected in &case.exp_alerts {
            let labels = &expected.exp_labels;
            let what = format!(
                "{file}: {} at {} with labels {labels:?}",
                case.alertname, case.eval_time
            );
            let texts: Vec<&str> = ["summary", "description"]
                .iter()
                .map(|k| {
                    expected
                        .exp_annotations
                        .get(*k)
                        .unwrap_or_else(|| {
                            panic!("{what}: give the expected {k} in exp_annotations")
                        })
                        .as_str()
                })
                .collect();
            let named = WHERE_LABELS.iter().any(|l| {
                labels
                    .get(*l)
                    .is_some_and(|v| texts.iter().all(|t| t.contains(v.as_str())))
            });
            assert!(
                named,
                "{what}: the summary and description must name its host or instance: {texts:?}"
            );
        }
    }
}

/// Each alert, and each severity of an alert with several, fires in some unit test; each alert
/// stays quiet in some unit test.
#[test]
fn every_alert_is_unit_tested_both_firing_and_not_firing() {
    for path in rule_files() {
        let tests_file = test_file_of(&path);
        let tests: RuleTestFile = read_yaml(&tests_file);
        let tests_name = relative(&tests_file);
        let mut firing = BTreeSet::new();
        let mut quiet = BTreeSet::new();
        for case in tests.tests.iter().flat_map(|t| &t.alert_rule_test) {
            if case.exp_alerts.is_empty() {
                quiet.insert(case.alertname.clone());
            }
            for alert in &case.exp_alerts {
                let severity = alert.exp_labels.get("severity").cloned();
                firing.insert((case.alertname.clone(), severity.unwrap_or_default()));
            }
        }
        let file: RuleFile = read_yaml(&path);
        for rule in file.groups.into_iter().flat_map(|g| g.rules) {
            let Some(alert) = rule.alert else { continue };
            let severity = rule.labels.get("severity").cloned().unwrap_or_default();
            assert!(
                firing.contains(&(alert.clone(), severity.clone())),
                "{tests_name} has no case where {alert} fires with severity {severity:?}"
            );
            assert!(
                quiet.contains(&alert),
                "{tests_name} has no case where {alert} stays quiet"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dashboards

#[test]
fn every_dashboard_is_importable_into_any_grafana() {
    for (file, dashboard) in dashboards() {
        for key in ["uid", "title"] {
            assert!(
                dashboard[key].as_str().is_some_and(|s| !s.is_empty()),
                "{file}: needs a {key}"
            );
        }
        assert!(
            dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
            "{file}: schemaVersion must be 36 or later (Grafana 9+)"
        );

        let variables = dashboard["templating"]["list"].as_array().cloned();
        let variables = variables.unwrap_or_default();
        let variable = |name: &str| variables.iter().find(|v| v["name"] == name);
        let datasource = variable("datasource")
            .unwrap_or_else(|| panic!("{file}: needs a `datasource` template variable"));
        assert_eq!(datasource["type"], "datasource", "{file}: $datasource");
        assert_eq!(datasource["query"], "prometheus", "{file}: $datasource");
        let host =
            variable("host").unwrap_or_else(|| panic!("{file}: needs a `host` template variable"));
        assert_eq!(host["type"], "query", "{file}: $host");

        // A hard-coded data source uid exists only in the Grafana the dashboard was drawn in.
        let mut refs = Vec::new();
        collect_datasource_refs(&dashboard, "", &mut refs);
        for (path, uid) in refs {
            assert!(
                uid == "${datasource}" || uid == "$datasource" || uid.starts_with("-- "),
                "{file}: {path} uses data source uid {uid:?} instead of ${{datasource}}"
            );
        }
    }
}

#[test]
fn every_panel_has_a_unique_id_a_type_and_a_place_of_its_own() {
    for (file, dashboard) in dashboards() {
        let mut ids = HashSet::new();
        let top = dashboard["panels"].as_array().cloned().unwrap_or_default();
        assert!(!top.is_empty(), "{file}: has no panels");
        check_panel_level(&file, "top level", &top, &mut ids);
        for row in top.iter().filter(|p| p["type"] == "row") {
            let nested = row["panels"].as_array().cloned().unwrap_or_default();
            let level = format!("row {}", row["title"]);
            check_panel_level(&file, &level, &nested, &mut ids);
        }
    }
}

#[test]
fn grafana_variables_become_values_prometheus_accepts() {
    assert_eq!(
        substitute_variables(r#"rate(x{host=~"$host"}[$__rate_interval])"#),
        r#"rate(x{host=~".*"}[5m])"#
    );
    assert_eq!(
        substitute_variables(r#"increase(x{a="${a}",b="${b:regex}",c="[[c]]"}[$__range])"#),
        r#"increase(x{a=".*",b=".*",c=".*"}[1h])"#
    );
    assert_eq!(
        substitute_variables("sum_over_time(x[${__interval}])"),
        "sum_over_time(x[1m])"
    );
    assert_eq!(
        variable_query_expr(r#"label_values(x{a="b,c"}, host)"#).as_deref(),
        Some(r#"x{a="b,c"}"#)
    );
    assert_eq!(variable_query_expr("label_values(host)"), None);
    assert_eq!(
        variable_query_expr("query_result(topk(3, x))").as_deref(),
        Some("topk(3, x)")
    );
}

#[test]
fn every_dashboard_query_parses_as_promql() {
    let queries = dashboard_queries();
    assert!(!queries.is_empty(), "found no dashboard queries");
    let errors: Vec<String> = queries
        .iter()
        .filter_map(|q| {
            let e = parser::parse(&q.promql).err()?;
            Some(format!("{}: {e}\n    {}", q.origin, q.promql))
        })
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// promql-parser follows current Prometheus; the Prometheus in CI (2.42) is the authority on
/// what it will evaluate, e.g. it knows no `limitk`.
#[test]
fn every_dashboard_query_is_accepted_by_promtool() {
    let queries = dashboard_queries();
    let rules: Vec<Json> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| json!({ "record": format!("dashboard_query_{i}"), "expr": q.promql }))
        .collect();
    let file = json!({ "groups": [{ "name": "dashboard-queries", "rules": rules }] });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-queries.yaml");
    fs::write(&path, serde_yaml::to_string(&file).unwrap()).unwrap();

    let out = promtool(
        &["check".as_ref(), "rules".as_ref(), path.as_os_str()],
        None,
    );
    let index: Vec<String> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| format!("dashboard_query_{i} = {}: {}", q.origin, q.promql))
        .collect();
    assert_success(
        &format!(
            "promtool check rules on every dashboard query:\n{}",
            index.join("\n")
        ),
        &out,
    );
}

/// A misspelt metric or label name is valid PromQL; it only shows up as a panel that is always
/// empty or an alert that never fires. So is a misspelt label value.
#[test]
fn dashboards_and_rules_query_only_series_labels_and_values_virtgate_exports() {
    let exported = exported();
    let mut problems = Vec::new();
    for q in dashboard_queries().into_iter().chain(rule_queries()) {
        let parsed = parser::parse(&q.promql)
            .unwrap_or_else(|e| panic!("{}: {e}\n    {}", q.origin, q.promql));
        let usage = SeriesUsage::of(&parsed);
        let mut available: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
        for selector in &usage.selectors {
            let Some(name) = selector.name.as_deref() else {
                problems.push(format!("{}: a selector without a metric name", q.origin));
                continue;
            };
            if PROMETHEUS_SERIES.contains(&name) {
                continue;
            }
            let Some(labels) = exported.get(name) else {
                problems.push(format!("{}: {name} is not exported", q.origin));
                continue;
            };
            available.extend(labels.iter());
            for matcher in &selector.matchers {
                let label = matcher.label.as_str();
                if !labels.contains(&label) && !TARGET_LABELS.contains(&label) {
                    problems.push(format!("{}: {name} has no label {label}", q.origin));
                }
                let Some(known) = known_values(name, label) else {
                    continue;
                };
                for value in matcher.literal_values() {
                    if !known.contains(&value.as_str()) {
                        problems.push(format!(
                            "{}: {name}{{{label}}} is never {value:?}; it is one of {known:?}",
                            q.origin
                        ));
                    }
                }
            }
        }
        // With an unknown series in the expression, its labels are unknown too.
        let all_known = usage
            .selectors
            .iter()
            .all(|s| s.name.as_deref().is_some_and(|n| exported.contains_key(n)));
        for label in &usage.grouping {
            if all_known && !available.contains(label.as_str()) {
                problems.push(format!(
                    "{}: groups by {label}, which none of its series has",
                    q.origin
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn label_value_matchers_are_checked_when_they_list_plain_values() {
    let values = |promql: &str| -> Vec<Vec<String>> {
        let usage = SeriesUsage::of(&parser::parse(promql).unwrap());
        usage.selectors[0]
            .matchers
            .iter()
            .map(SelectorMatcher::literal_values)
            .collect()
    };
    assert_eq!(values(r#"x{a="b"}"#), [["b"]]);
    assert_eq!(values(r#"x{a!~"b|c_d"}"#), [["b", "c_d"]]);
    assert_eq!(values(r#"x{a=~"b.*"}"#), [Vec::<String>::new()]);
    assert_eq!(values(r#"x{a=~"(b|c)"}"#), [Vec::<String>::new()]);
    assert_eq!(values(r#"x{a=""}"#), [Vec::<String>::new()]);
}

// ---------------------------------------------------------------------------------------------
// Against the real gateway

/// `virtgate up` (broker and gateway in one process) in front of a real libvirtd, after one
/// real virsh session through the gateway so that the per-host series exist. Its `/metrics` must
/// pass `promtool check metrics`, hold every series that a dashboard or rule queries, and match
/// the exported lists above (names, labels and the fixed label values).
#[test]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
fn virtgate_up_metrics_pass_promtool_and_hold_every_series_dashboards_and_rules_query() {
    use common::gateway::{identity, text, virsh, Gateway};
    use virtgate_testlab::libvirtd::{Libvirtd, LibvirtdOptions};
    use virtgate_testlab::pki::ServerCertSpec;
    use virtgate_testlab::time;

    // Before libvirtd, so a missing tool is reported as such.
    promtool(&["--version".as_ref()], None);
    assert!(
        Path::new(VIRSH).is_file(),
        "{VIRSH} not found: it comes with Debian's libvirt-clients package; run \
         ./scripts/test.sh, which installs it"
    );

    // Ten days left puts the host's certificate in the warning window, so the broker has a
    // finding to export; `virtgate_cert_findings` only has series for findings that exist.
    let mut server_cert = ServerCertSpec::localhost();
    server_cert.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    let libvirtd = Libvirtd::start(LibvirtdOptions {
        server_cert,
        ..LibvirtdOptions::default()
    })
    .expect("start libvirtd");

    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        dir.path(),
        &libvirtd,
        &format!(
            r#"[[broker.hosts]]
name = "h1"
addresses = ["127.0.0.1"]
port = {port}

[[proxy.rules]]
identity = "*CN=alice"
hosts = ["h1", "h2"]
mode = "rw"
"#,
            port = libvirtd.port()
        ),
    );
    gw.wait_trust("h1", "pending");
    gw.approve("h1");
    // h2: the same libvirtd behind an enrolled agent, for the agent check's series.
    let mut agent = common::agent::Agent::new(dir.path(), &libvirtd);
    agent.enroll_and_start(&gw, "h2");
    let alice = identity(&libvirtd, "alice", "C=GB,O=virtgate-test,CN=alice");
    for host in ["h1", "h2"] {
        let session = virsh(&gw.uri("127.0.0.1", host, &alice), &["list", "--all"]);
        assert!(
            session.status.success(),
            "virsh list through the gateway to {host}: {}\ngateway stderr:\n{}",
            text(&session),
            gw.process.stderr_text()
        );
    }

    // The probes export the host's certificate and its finding within a probe interval (1 s);
    // the session's series are there as soon as it has ended.
    let want = [
        "virtgate_cert_findings",
        "virtgate_proxy_rpc_duration_seconds_count",
    ];
    let deadline = Instant::now() + Duration::from_secs(15);
    let scrape = loop {
        let scrape = gw.metrics();
        let scraped = scraped_series(&scrape);
        let h1_cert = scraped
            .get("virtgate_cert_not_after_timestamp_seconds")
            .and_then(|labels| labels.get("host"))
            .is_some_and(|hosts| hosts.contains("h1"));
        if h1_cert && want.iter().all(|name| scraped.contains_key(*name)) {
            break scrape;
        }
        assert!(
            Instant::now() < deadline,
            "no certificate of h1, {want:?} on /metrics within 15 s:\n{scrape}\n\
             gateway stderr:\n{}",
            gw.process.stderr_text()
        );
        thread::sleep(Duration::from_millis(100));
    };

    let out = promtool(
        &["check".as_ref(), "metrics".as_ref()],
        Some(scrape.as_bytes()),
    );
    assert_success(
        &format!("promtool check metrics on virtgate up's /metrics:\n{scrape}"),
        &out,
    );

    let scraped = scraped_series(&scrape);
    let mut problems = Vec::new();
    for q in dashboard_queries().into_iter().chain(rule_queries()) {
        let parsed = parser::parse(&q.promql).unwrap();
        for selector in SeriesUsage::of(&parsed).selectors {
            let name = selector.name.unwrap_or_default();
            let follower_only = FOLLOWER_EXPORTED.iter().any(|(n, _)| *n == name);
            if !PROMETHEUS_SERIES.contains(&name.as_str())
                && !follower_only
                && !scraped.contains_key(&name)
            {
                problems.push(format!("{}: queries {name}, not in the scrape", q.origin));
            }
        }
    }
    // The offline checks above trust the exported lists; this keeps them honest.
    for (name, labels) in BROKER_EXPORTED.iter().chain(PROXY_EXPORTED) {
        let want: BTreeSet<&str> = labels.iter().copied().collect();
        match scraped.get(*name) {
            None => problems.push(format!(
                "{name} is not in the scrape (a labelled counter needs each label value \
                 initialised to 0 at start)"
            )),
            Some(got) => {
                let got: BTreeSet<&str> = got.keys().map(String::as_str).collect();
                if got != want {
                    problems.push(format!("{name} has labels {got:?}, expected {want:?}"));
                }
            }
        }
    }
    for (name, label, known, all_present) in LABEL_VALUES {
        let got = scraped
            .get(*name)
            .and_then(|labels| labels.get(*label))
            .cloned()
            .unwrap_or_default();
        for value in &got {
            if !known.contains(&value.as_str()) {
                problems.push(format!(
                    "{name}{{{label}={value:?}}} is in the scrape but not in LABEL_VALUES"
                ));
            }
        }
        if *all_present {
            for value in known.iter().filter(|v| !got.contains(**v)) {
                problems.push(format!("{name}{{{label}={value:?}}} is not in the scrape"));
            }
        }
    }
    let per_host = [
        "virtgate_proxy_rpc_calls_total",
        "virtgate_proxy_rpc_duration_seconds_count",
        "virtgate_proxy_bytes_total",
        "virtgate_host_up",
    ];
    for name in per_host {
        let hosts = scraped.get(name).and_then(|labels| labels.get("host"));
        if !hosts.is_some_and(|h| h.contains("h1")) {
            problems.push(format!("{name} has no series of host h1 after the session"));
        }
    }
    for role in ["proxy_server", "proxy_client", "ca"] {
        let found = scrape.lines().any(|line| {
            line.starts_with("virtgate_cert_not_after_timestamp_seconds{")
                && line.contains("host=\"virtgate\"")
                && line.contains(&format!("role=\"{role}\""))
        });
        if !found {
            problems.push(format!(
                "no virtgate_cert_not_after_timestamp_seconds{{host=\"virtgate\",role=\"{role}\"}}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n\nscrape:\n{scrape}",
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

fn files_in(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.file_name().and_then(OsStr::to_str).is_some_and(&keep))
        .collect();
    files.sort();
    files
}

fn rule_files() -> Vec<PathBuf> {
    let files = files_in(&dashboards_dir().join("rules"), |name| {
        name.ends_with(".yaml") && !name.ends_with(".test.yaml")
    });
    assert!(!files.is_empty(), "no rule files in dashboards/rules");
    files
}

fn rule_test_files() -> Vec<PathBuf> {
    files_in(&dashboards_dir().join("rules"), |name| {
        name.ends_with(".test.yaml")
    })
}

/// `rules/NAME.yaml` → `rules/NAME.test.yaml`.
fn test_file_of(rules: &Path) -> PathBuf {
    rules.with_extension("test.yaml")
}

/// Every series virtgate exports, with its labels.
fn exported() -> BTreeMap<&'static str, &'static [&'static str]> {
    BROKER_EXPORTED
        .iter()
        .chain(PROXY_EXPORTED)
        .chain(FOLLOWER_EXPORTED)
        .copied()
        .collect()
}

fn known_values(name: &str, label: &str) -> Option<&'static [&'static str]> {
    LABEL_VALUES
        .iter()
        .find(|(n, l, _, _)| *n == name && *l == label)
        .map(|(_, _, values, _)| *values)
}

fn dashboards() -> Vec<(String, Json)> {
    let files = files_in(&dashboards_dir(), |name| name.ends_with(".json"));
    assert!(!files.is_empty(), "no dashboards in dashboards/");
    files
        .into_iter()
        .map(|path| {
            let text = fs::read_to_string(&path).unwrap();
            let name = relative(&path);
            let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, json)
        })
        .collect()
}

fn relative(path: &Path) -> String {
    path.strip_prefix(dashboards_dir())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn read_yaml<T: for<'de> Deserialize<'de>>(path: &Path) -> T {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[derive(Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Deserialize)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
struct Rule {
    alert: Option<String>,
    record: Option<String>,
    expr: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RuleTestFile {
    #[serde(default)]
    rule_files: Vec<String>,
    tests: Vec<RuleTest>,
}

#[derive(Deserialize)]
struct RuleTest {
    #[serde(default)]
    alert_rule_test: Vec<AlertRuleTest>,
}

#[derive(Deserialize)]
struct AlertRuleTest {
    alertname: String,
    eval_time: String,
    #[serde(default)]
    exp_alerts: Vec<ExpectedAlert>,
}

#[derive(Deserialize)]
struct ExpectedAlert {
    #[serde(default)]
    exp_labels: BTreeMap<String, String>,
    #[serde(default)]
    exp_annotations: BTreeMap<String, String>,
}

/// Every `alert_rule_test` case of every unit test file, with the file's name.
fn alert_test_cases() -> Vec<(String, AlertRuleTest)> {
    let mut cases = Vec::new();
    for path in rule_test_files() {
        let file: RuleTestFile = read_yaml(&path);
        for case in file.tests.into_iter().flat_map(|t| t.alert_rule_test) {
            cases.push((relative(&path), case));
        }
    }
    cases
}

fn alert_rules() -> Vec<(String, Rule)> {
    let mut alerts = Vec::new();
    for path in rule_files() {
        let file: RuleFile = read_yaml(&path);
        for rule in file.groups.into_iter().flat_map(|g| g.rules) {
            if rule.alert.is_some() {
                alerts.push((relative(&path), rule));
            }
        }
    }
    alerts
}

/// A PromQL expression and where it was found, for failure messages.
struct Query {
    origin: String,
    /// With Grafana's variables replaced, so that it parses.
    promql: String,
}

fn rule_queries() -> Vec<Query> {
    let mut queries = Vec::new();
    for path in rule_files() {
        let file: RuleFile = read_yaml(&path);
        for rule in file.groups.into_iter().flat_map(|g| g.rules) {
            let name = rule.alert.or(rule.record).unwrap_or_default();
            queries.push(Query {
                origin: format!("{}: rule {name}", relative(&path)),
                promql: rule.expr,
            });
        }
    }
    queries
}

fn dashboard_queries() -> Vec<Query> {
    let mut queries = Vec::new();
    for (file, dashboard) in dashboards() {
        let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
        collect_panel_queries(&file, &panels, &mut queries);
        for variable in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["type"] == "query")
        {
            // Grafana 10+ stores an object, older versions the bare string.
            let query = variable["query"]["query"]
                .as_str()
                .or(variable["query"].as_str())
                .unwrap_or_default();
            if let Some(expr) = variable_query_expr(query) {
                queries.push(Query {
                    origin: format!("{file}: variable ${}", variable["name"].as_str().unwrap()),
                    promql: substitute_variables(&expr),
                });
            }
        }
    }
    queries
}

fn collect_panel_queries(file: &str, panels: &[Json], queries: &mut Vec<Query>) {
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                queries.push(Query {
                    origin: format!(
                        "{file}: panel {} {} target {}",
                        panel["id"], panel["title"], target["refId"]
                    ),
                    promql: substitute_variables(expr),
                });
            }
        }
        if let Some(nested) = panel["panels"].as_array() {
            collect_panel_queries(file, nested, queries);
        }
    }
}

/// The PromQL inside a Prometheus query variable: `label_values(SELECTOR, LABEL)` or
/// `query_result(EXPR)`. Other variable queries (`label_values(LABEL)`, `label_names()`,
/// `metrics(…)`) hold none.
fn variable_query_expr(query: &str) -> Option<String> {
    let query = query.trim();
    if let Some(args) = query
        .strip_prefix("label_values(")
        .and_then(|rest| rest.strip_suffix(')'))
    {
        let comma = last_top_level_comma(args)?;
        return Some(args[..comma].trim().to_string());
    }
    query
        .strip_prefix("query_result(")
        .and_then(|rest| rest.strip_suffix(')'))
        .map(|e| e.trim().to_string())
}

fn last_top_level_comma(s: &str) -> Option<usize> {
    let (mut depth, mut quote, mut escaped, mut last) = (0i32, None, false, None);
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(_), _) if escaped => escaped = false,
            (Some(_), '\\') => escaped = true,
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '(' | '{' | '[') => depth += 1,
            (None, ')' | '}' | ']') => depth -= 1,
            (None, ',') if depth == 0 => last = Some(i),
            _ => {}
        }
    }
    last
}

/// Grafana's built-in intervals become typical values and every other variable the regex that
/// "All" sends, which keeps `label=~"$var"` valid.
fn substitute_variables(expr: &str) -> String {
    let mut s = expr.to_string();
    for (name, value) in [
        ("__rate_interval", "5m"),
        ("__interval", "1m"),
        ("__range", "1h"),
    ] {
        s = s.replace(&format!("${{{name}}}"), value);
        s = s.replace(&format!("${name}"), value);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(i) = rest.find(['$', '[']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let skip = if let Some(inner) = tail.strip_prefix("${") {
            inner.find('}').map(|end| 2 + end + 1)
        } else if let Some(inner) = tail.strip_prefix("[[") {
            inner.find("]]").map(|end| 2 + end + 2)
        } else if let Some(name) = tail.strip_prefix('$') {
            let name_len = name
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(name.len());
            (name_len > 0).then_some(1 + name_len)
        } else {
            None
        };
        match skip {
            Some(n) => {
                out.push_str(".*");
                rest = &tail[n..];
            }
            None => {
                out.push_str(&tail[..1]);
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The series an expression selects and the labels it groups by.
#[derive(Default)]
struct SeriesUsage {
    selectors: Vec<Selector>,
    grouping: BTreeSet<String>,
}

struct Selector {
    name: Option<String>,
    /// Its matchers, `__name__` excluded.
    matchers: Vec<SelectorMatcher>,
}

struct SelectorMatcher {
    label: String,
    /// `=` or `!=`: the value; `=~` or `!~`: the regex.
    value: String,
    regex: bool,
}

impl SelectorMatcher {
    /// The label values it names: the value of `=` and `!=` (unless empty, which means "no
    /// such label"), the alternatives of a regex that is only plain words joined by `|`.
    /// Other regexes name no values that can be checked.
    fn literal_values(&self) -> Vec<String> {
        let plain =
            |v: &str| !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !self.regex {
            return if self.value.is_empty() {
                Vec::new()
            } else {
                vec![self.value.clone()]
            };
        }
        let alternatives: Vec<&str> = self.value.split('|').collect();
        if alternatives.iter().all(|a| plain(a)) {
            alternatives.into_iter().map(str::to_string).collect()
        } else {
            Vec::new()
        }
    }
}

impl SeriesUsage {
    fn of(expr: &Expr) -> SeriesUsage {
        let mut usage = SeriesUsage::default();
        walk_expr(&mut usage, expr).unwrap();
        usage
    }

    fn add(&mut self, vs: &VectorSelector) {
        let name_matcher = vs
            .matchers
            .matchers
            .iter()
            .find(|m| m.name == "__name__" && matches!(m.op, MatchOp::Equal))
            .map(|m| m.value.clone());
        self.selectors.push(Selector {
            name: vs.name.clone().or(name_matcher),
            matchers: vs
                .matchers
                .matchers
                .iter()
                .chain(vs.matchers.or_matchers.iter().flatten())
                .filter(|m| m.name != "__name__")
                .map(|m| SelectorMatcher {
                    label: m.name.clone(),
                    value: m.value.clone(),
                    regex: matches!(m.op, MatchOp::Re(_) | MatchOp::NotRe(_)),
                })
                .collect(),
        });
    }
}

impl ExprVisitor for SeriesUsage {
    type Error = Infallible;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Infallible> {
        match expr {
            Expr::VectorSelector(vs) => self.add(vs),
            Expr::MatrixSelector(ms) => self.add(&ms.vs),
            Expr::Aggregate(agg) => {
                if let Some(modifier) = &agg.modifier {
                    self.grouping
                        .extend(modifier.labels().labels.iter().cloned());
                }
            }
            _ => {}
        }
        Ok(true)
    }
}

fn collect_datasource_refs(value: &Json, path: &str, out: &mut Vec<(String, String)>) {
    match value {
        Json::Object(map) => {
            for (key, child) in map {
                let here = format!("{path}/{key}");
                if key == "datasource" {
                    if let Some(uid) = child["uid"].as_str().or(child.as_str()) {
                        out.push((here.clone(), uid.to_string()));
                    }
                }
                collect_datasource_refs(child, &here, out);
            }
        }
        Json::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                collect_datasource_refs(child, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Ids are unique across the whole dashboard; panels of one level (the top, or one row's
/// nested panels) must not overlap: Grafana would push them around.
fn check_panel_level(file: &str, level: &str, panels: &[Json], ids: &mut HashSet<u64>) {
    let mut rects = Vec::new();
    for panel in panels {
        let title = &panel["title"];
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{file}: panel {title} needs a numeric id"));
        assert!(ids.insert(id), "{file}: panel id {id} is used twice");
        assert!(
            panel["type"].as_str().is_some_and(|t| !t.is_empty()),
            "{file}: panel {id} {title} needs a type"
        );
        let grid = &panel["gridPos"];
        let [h, w, x, y] = ["h", "w", "x", "y"].map(|k| {
            grid[k].as_u64().unwrap_or_else(|| {
                panic!("{file}: panel {id} {title}: gridPos.{k} must be an integer")
            })
        });
        assert!(
            h > 0 && w > 0 && x + w <= 24,
            "{file}: panel {id} {title}: gridPos {grid} does not fit the 24-column grid"
        );
        rects.push((id, x, y, w, h));
    }
    for (i, a) in rects.iter().enumerate() {
        for b in &rects[i + 1..] {
            let apart =
                a.1 + a.3 <= b.1 || b.1 + b.3 <= a.1 || a.2 + a.4 <= b.2 || b.2 + b.4 <= a.2;
            assert!(
                apart,
                "{file} ({level}): panels {} and {} overlap",
                a.0, b.0
            );
        }
    }
}

/// Runs promtool; a missing promtool is a failure, not a skip.
fn promtool(args: &[&OsStr], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new("promtool");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == io::ErrorKind::NotFound => panic!(
            "promtool not found on PATH. It comes with Debian's `prometheus` package: run \
             ./scripts/test.sh, which installs it."
        ),
        Err(e) => panic!("run promtool: {e}"),
    };
    if let Some(input) = stdin {
        // A writer thread: promtool may answer before it has read everything.
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_vec();
        thread::spawn(move || pipe.write_all(&input));
    }
    child.wait_with_output().expect("wait for promtool")
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what}\nfailed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `/usr/bin/virsh`, which `common::gateway::virsh` runs.
const VIRSH: &str = "/usr/bin/virsh";

/// Sample names of a text-format scrape, each with its labels and the values they take.
type Scraped = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn scraped_series(scrape: &str) -> Scraped {
    let mut series = Scraped::new();
    for line in scrape
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = series.entry(line[..name_end].to_string()).or_default();
        if line[name_end..].starts_with('{') {
            for (name, value) in label_pairs(&line[name_end + 1..]) {
                labels.entry(name).or_default().insert(value);
            }
        }
    }
    series
}

/// Label names and (unescaped) values from `a="x",b="y\"z"} 1`.
fn label_pairs(mut rest: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    while let Some(eq) = rest.find('=') {
        let name = rest[..eq].trim_start_matches([',', ' ']).trim();
        if name.is_empty() || name.starts_with('}') {
            break;
        }
        let Some(quoted) = rest[eq + 1..].strip_prefix('"') else {
            break;
        };
        let mut value = String::new();
        let mut escaped = false;
        let mut close = None;
        for (i, c) in quoted.char_indices() {
            match (escaped, c) {
                (true, 'n') => value.push('\n'),
                (true, c) => value.push(c),
                (false, '\\') => {}
                (false, '"') => {
                    close = Some(i);
                    break;
                }
                (false, c) => value.push(c),
            }
            escaped = !escaped && c == '\\';
        }
        let Some(close) = close else { break };
        pairs.push((name.to_string(), value));
        rest = &quoted[close + 1..];
        if rest.starts_with('}') {
            break;
        }
    }
    pairs
}
