//! The Grafana dashboards and Prometheus alert rules shipped in `dashboards/`, checked offline.
//!
//! No Grafana server can run here, so a dashboard is held to what can be proven without one: it
//! is well formed, each of its queries is PromQL that the Prometheus we test against accepts,
//! and it queries only series (and labels) that the broker exports. The alert rules are checked
//! and unit-tested by promtool.
//!
//! promtool comes with Debian's `prometheus` package, which ./scripts/test.sh installs. Without
//! it these tests fail rather than skip: a skipped check would let a broken rule file through.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::convert::Infallible;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
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
const EXPORTED: &[(&str, &[&str])] = &[
    ("virtgate_cert_not_after_timestamp_seconds", CERT_LABELS),
    ("virtgate_cert_not_before_timestamp_seconds", CERT_LABELS),
    ("virtgate_cert_findings", &["host", "finding"]),
    ("virtgate_hosts", &["state"]),
    ("virtgate_host_trust", &["host", "state"]),
    ("virtgate_host_up", &["host"]),
    ("virtgate_probe_duration_seconds_bucket", &["le"]),
    ("virtgate_probe_duration_seconds_sum", &[]),
    ("virtgate_probe_duration_seconds_count", &[]),
    ("virtgate_probe_errors_total", &["reason"]),
    ("virtgate_discovery_events_total", &["kind"]),
    ("virtgate_build_info", &["version"]),
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

const RULES: &str = "rules/virtgate-certificates.yaml";
const RULE_TESTS: &str = "rules/virtgate-certificates.test.yaml";

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
fn the_alert_rules_pass_their_promtool_unit_tests() {
    let file = dashboards_dir().join(RULE_TESTS);
    let out = promtool(&["test".as_ref(), "rules".as_ref(), file.as_os_str()], None);
    assert_success(&format!("promtool test rules {}", file.display()), &out);
}

#[test]
fn the_shipped_alerts_and_their_severities() {
    let file: RuleFile = read_yaml(&dashboards_dir().join(RULES));
    let group_names: Vec<&str> = file.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(group_names, ["virtgate-certificates"]);

    let severities: BTreeMap<&str, &str> = file.groups[0]
        .rules
        .iter()
        .filter_map(|r| Some((r.alert.as_deref()?, r.labels.get("severity")?.as_str())))
        .collect();
    assert_eq!(
        severities,
        BTreeMap::from([
            ("VirtgateCertificateExpired", "critical"),
            ("VirtgateCertificateExpiringCritical", "critical"),
            ("VirtgateCertificateExpiringSoon", "warning"),
            ("VirtgateHostKeyChanged", "critical"),
            ("VirtgateHostPendingApproval", "warning"),
            ("VirtgateProbesFailing", "warning"),
        ])
    );
}

#[test]
fn every_alert_names_the_host_in_its_summary_and_description() {
    for (file, rule) in alert_rules() {
        let alert = rule.alert.as_deref().unwrap();
        for key in ["summary", "description"] {
            let text = rule.annotations.get(key).map(String::as_str);
            assert!(
                text.is_some_and(|t| t.contains("{{ $labels.host }}")),
                "{file}: alert {alert} needs a {key} annotation that names {{{{ $labels.host }}}}, \
                 got {text:?}"
            );
        }
    }
}

#[test]
fn every_alert_is_unit_tested_both_firing_and_not_firing() {
    let tests: RuleTestFile = read_yaml(&dashboards_dir().join(RULE_TESTS));
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for case in tests.tests.iter().flat_map(|t| &t.alert_rule_test) {
        if case.exp_alerts.is_empty() {
            quiet.insert(case.alertname.clone());
        } else {
            firing.insert(case.alertname.clone());
        }
    }
    for (_, rule) in alert_rules() {
        let alert = rule.alert.unwrap();
        assert!(
            firing.contains(&alert),
            "{RULE_TESTS} has no case where {alert} fires"
        );
        assert!(
            quiet.contains(&alert),
            "{RULE_TESTS} has no case where {alert} stays quiet"
        );
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
/// empty or an alert that never fires.
#[test]
fn dashboards_and_rules_query_only_series_and_labels_the_broker_exports() {
    let exported: BTreeMap<&str, &[&str]> = EXPORTED.iter().copied().collect();
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
            for label in &selector.labels {
                if !labels.contains(&label.as_str()) && !TARGET_LABELS.contains(&label.as_str()) {
                    problems.push(format!("{}: {name} has no label {label}", q.origin));
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

// ---------------------------------------------------------------------------------------------
// Against the real broker

#[test]

fn the_brokers_metrics_pass_promtool_and_hold_every_series_dashboards_and_rules_query() {
    use virtgate_testlab::libvirtd::{Libvirtd, LibvirtdOptions};
    use virtgate_testlab::pki::ServerCertSpec;
    use virtgate_testlab::time;
    use virtgate_testlab::LabProcess;

    // Before libvirtd, so a missing promtool is reported as such.
    promtool(&["--version".as_ref()], None);

    // Ten days left puts the certificate in the warning window, so the broker has a finding
    // to export; `virtgate_cert_findings` only has series for findings that exist.
    let mut server_cert = ServerCertSpec::localhost();
    server_cert.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    let libvirtd = Libvirtd::start(LibvirtdOptions {
        server_cert,
        ..LibvirtdOptions::default()
    })
    .expect("start libvirtd");

    let dir = tempfile::tempdir().unwrap();
    let listen = free_loopback_addr();
    let config = dir.path().join("virtgate.toml");
    fs::write(
        &config,
        format!(
            r#"[broker]
data_dir = "{data}"
listen = "{listen}"
# No mDNS daemon may run in the root network namespace.
discovery = false

[[broker.hosts]]
name = "localhost"
addresses = ["127.0.0.1"]
port = {port}
"#,
            data = dir.path().join("data").display(),
            port = libvirtd.port(),
        ),
    )
    .unwrap();

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_virtgate"));
    cmd.arg("broker").arg("--config").arg(&config);
    cmd.env_remove("RUST_LOG");
    for (key, _) in std::env::vars() {
        if key.starts_with("VIRTGATE_") {
            cmd.env_remove(key);
        }
    }
    let mut broker = LabProcess::spawn(cmd).expect("start virtgate broker");

    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last: String;
    let scrape = loop {
        if let Some(status) = broker.try_exit_status() {
            panic!(
                "virtgate broker exited ({status}) before its first probe:\n{}",
                broker.stderr_text()
            );
        }
        match http_get(listen, "/readyz") {
            Ok((200, _)) => match http_get(listen, "/metrics") {
                Ok((200, body)) if body.contains("virtgate_cert_not_after_timestamp_seconds") => {
                    break body
                }
                Ok((status, body)) => last = format!("/metrics: {status}\n{body}"),
                Err(e) => last = format!("/metrics: {e}"),
            },
            Ok((status, body)) => last = format!("/readyz: {status} {body}"),
            Err(e) => last = format!("/readyz: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "no certificate series on http://{listen}/metrics within 15 s; last answer: {last}\n\
             broker stderr:\n{}\nlibvirtd: {libvirtd:?}",
            broker.stderr_text()
        );
        thread::sleep(Duration::from_millis(100));
    };

    let out = promtool(
        &["check".as_ref(), "metrics".as_ref()],
        Some(scrape.as_bytes()),
    );
    assert_success(
        &format!("promtool check metrics on the broker's /metrics:\n{scrape}"),
        &out,
    );

    let scraped = scraped_series(&scrape);
    let mut problems = Vec::new();
    for q in dashboard_queries().into_iter().chain(rule_queries()) {
        let parsed = parser::parse(&q.promql).unwrap();
        for selector in SeriesUsage::of(&parsed).selectors {
            let name = selector.name.unwrap_or_default();
            if !PROMETHEUS_SERIES.contains(&name.as_str()) && !scraped.contains_key(&name) {
                problems.push(format!("{}: queries {name}, not in the scrape", q.origin));
            }
        }
    }
    // The offline checks above trust EXPORTED; this keeps it honest.
    for (name, labels) in EXPORTED {
        let want: BTreeSet<String> = labels.iter().map(|l| l.to_string()).collect();
        match scraped.get(*name) {
            None => problems.push(format!(
                "{name} is not in the scrape (a labelled counter needs each label value \
                 initialised to 0 at start)"
            )),
            Some(got) if *got != want => {
                problems.push(format!("{name} has labels {got:?}, expected {want:?}"))
            }
            Some(_) => {}
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
    #[serde(default)]
    exp_alerts: Vec<serde_yaml::Value>,
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
    /// Label names of its matchers, `__name__` excluded.
    labels: Vec<String>,
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
            labels: vs
                .matchers
                .matchers
                .iter()
                .chain(vs.matchers.or_matchers.iter().flatten())
                .filter(|m| m.name != "__name__")
                .map(|m| m.name.clone())
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

fn free_loopback_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap()
}

/// A bare HTTP/1.1 GET; the status and the body.
fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;

    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let body = &raw[split + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("no status code"))?;
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    let body = if chunked {
        dechunk(body).ok_or_else(|| invalid("bad chunked body"))?
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_line = std::str::from_utf8(&raw[..eol]).ok()?;
        let size_hex = size_line.split(';').next()?.trim();
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

/// Sample names of a text-format scrape, each with the label names it carries.
fn scraped_series(scrape: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut series: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in scrape
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = series.entry(line[..name_end].to_string()).or_default();
        if line[name_end..].starts_with('{') {
            labels.extend(label_names(&line[name_end + 1..]));
        }
    }
    series
}

/// Label names from `a="x",b="y\"z"} 1`.
fn label_names(mut rest: &str) -> Vec<String> {
    let mut names = Vec::new();
    while let Some(eq) = rest.find('=') {
        let name = rest[..eq].trim_start_matches([',', ' ']).trim();
        if name.is_empty() || name.starts_with('}') {
            break;
        }
        names.push(name.to_string());
        let value = &rest[eq + 1..];
        let Some(value) = value.strip_prefix('"') else {
            break;
        };
        let mut escaped = false;
        let Some(close) = value.char_indices().find_map(|(i, c)| {
            let end = !escaped && c == '"';
            escaped = !escaped && c == '\\';
            end.then_some(i)
        }) else {
            break;
        };
        rest = &value[close + 1..];
        if rest.starts_with('}') {
            break;
        }
    }
    names
}
