//! The Helm chart (`helm/virtgate`), rendered with the pinned helm that scripts/chart-check.sh
//! installs: the `virtgate.toml` it writes for the broker and for the gateways is read by the
//! binary itself (`virtgate --config FILE config`; every section rejects unknown keys, so the
//! binary is the schema check), the values schema and the binary agree on the keys, and the
//! rendered pods are what the chart promises (hardening, host network, drain, storage).
//! Kubernetes and CRD schemas, promtool and the negative values tests are chart-check.sh's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value as Json;
use serde_yaml::Value;

const VIRTGATE: &str = env!("CARGO_BIN_EXE_virtgate");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("helm/virtgate")
}

/// The pinned helm (scripts/chart-check.sh installs it), or `$VIRTGATE_HELM`.
fn helm() -> PathBuf {
    let helm = std::env::var_os("VIRTGATE_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/chart-tools/bin/helm"));
    assert!(
        helm.is_file(),
        "{} not found: run scripts/chart-check.sh --install-only (./scripts/test.sh runs \
         scripts/chart-check.sh before the tests), or point VIRTGATE_HELM at helm 3.18+ / 4",
        helm.display()
    );
    helm
}

/// `helm template` with the values files (relative to the chart) and `--set` pairs given.
fn render(values: &[&str], set: &[&str], kube: &str) -> Vec<Value> {
    let mut cmd = Command::new(helm());
    cmd.args(["template", "vg"])
        .arg(chart())
        .args(["-n", "virtgate", "--kube-version", kube])
        .args(["--api-versions", "monitoring.coreos.com/v1"])
        .args(["--api-versions", "cert-manager.io/v1"]);
    for v in values {
        cmd.arg("-f").arg(chart().join(v));
    }
    for s in set {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "helm template {values:?} {set:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn config_of(docs: &[Value], component: &str) -> String {
    find(docs, "ConfigMap", &format!("vg-virtgate-{component}"))["data"]["virtgate.toml"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Writes `toml` under `dir`, its absolute paths moved into `dir` and every file it names
/// created (empty: the loader checks that they are files), and runs `virtgate --config FILE
/// config` on it; returns the printed configuration.
fn load_with_binary(dir: &Path, name: &str, toml: &str) -> String {
    let mut text = toml.to_string();
    for prefix in ["/etc/virtgate/", "/var/lib/virtgate", "/var/cache/virtgate"] {
        text = text.replace(prefix, &format!("{}{prefix}", dir.display()));
    }
    let parsed: toml::Value = toml::from_str(&text)
        .unwrap_or_else(|e| panic!("the chart's {name} virtgate.toml is not TOML: {e}\n{toml}"));
    let mut files = Vec::new();
    collect_files(&parsed, &mut files);
    for file in files {
        std::fs::create_dir_all(Path::new(&file).parent().unwrap()).unwrap();
        std::fs::write(&file, "").unwrap();
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, &text).unwrap();
    let out = Command::new(VIRTGATE)
        .arg("--config")
        .arg(&path)
        .arg("config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "virtgate refuses the chart's {name} configuration:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn collect_files(value: &toml::Value, out: &mut Vec<String>) {
    if let toml::Value::Table(table) = value {
        for (key, v) in table {
            match v {
                toml::Value::String(s) if key.ends_with("_file") => out.push(s.clone()),
                toml::Value::Array(items) if key.ends_with("_files") => {
                    out.extend(items.iter().filter_map(|i| i.as_str().map(String::from)))
                }
                _ => collect_files(v, out),
            }
        }
    }
}

fn ci_values() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(chart().join("ci"))
        .unwrap()
        .map(|e| format!("ci/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    files
}

#[test]
fn every_values_set_renders_configurations_the_binary_accepts() {
    for values in ci_values() {
        let docs = render(&[&values], &[], "1.33.0");
        for component in ["broker", "gateway"] {
            let dir = tempfile::tempdir().unwrap();
            let printed = load_with_binary(dir.path(), component, &config_of(&docs, component));
            let effective: toml::Value = toml::from_str(&printed).unwrap();
            match component {
                "broker" => {
                    assert_eq!(effective["proxy"]["enabled"].as_bool(), Some(false));
                    assert!(effective["broker"]["tls_cert_file"].is_str(), "{values}");
                }
                _ => {
                    assert!(effective["proxy"]["server_cert_file"].is_str(), "{values}");
                    assert!(effective["proxy"]["backend_cert_file"].is_str(), "{values}");
                }
            }
        }
    }
    // A value set in the values reaches the binary as given.
    let docs = render(&["ci/full-values.yaml"], &[], "1.33.0");
    let dir = tempfile::tempdir().unwrap();
    let printed = load_with_binary(dir.path(), "gateway", &config_of(&docs, "gateway"));
    let effective: toml::Value = toml::from_str(&printed).unwrap();
    assert_eq!(effective["proxy"]["drain_timeout"].as_str(), Some("2m"));
    assert_eq!(
        effective["proxy"]["max_connections"].as_integer(),
        Some(2000)
    );
    assert_eq!(effective["proxy"]["rules"][1]["mode"].as_str(), Some("ro"));
    assert_eq!(effective["runtime"]["worker_threads"].as_integer(), Some(2));
}

/// Keys the chart sets itself from tls.*, broker.* and gateway.*; the schema refuses them
/// under `config`.
const CHART_SETS: &[(&str, &[&str])] = &[
    (
        "broker",
        &[
            "data_dir",
            "listen",
            "discovery",
            "tls_cert_file",
            "tls_key_file",
            "proxy_ca_files",
            "read_token_file",
            "trusted_ca_files",
            "client_cert_file",
            "client_key_file",
            "user_ca_files",
            "user_ca_key_file",
        ],
    ),
    (
        "proxy",
        &[
            "enabled",
            "listen",
            "host_listeners",
            "server_cert_file",
            "server_key_file",
            "client_ca_files",
            "crl_file",
            "backend_cert_file",
            "backend_key_file",
            "metrics_listen",
            "broker_ca_file",
            "broker_pin",
            "broker_token_file",
            "directory_cache_file",
        ],
    ),
];

fn schema() -> Json {
    serde_json::from_str(&std::fs::read_to_string(chart().join("values.schema.json")).unwrap())
        .unwrap()
}

fn schema_sections() -> Vec<(String, Json)> {
    let schema = schema();
    schema["properties"]["config"]["properties"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A value the schema accepts for `property`.
fn sample(property: &Json) -> Json {
    if let Some(values) = property["enum"].as_array() {
        return values[0].clone();
    }
    match property["type"].as_str() {
        Some("string") if property["pattern"].is_string() => Json::from("30s"),
        Some("string") => Json::from(""),
        Some("integer") => Json::from(property["minimum"].as_i64().unwrap_or(1).max(1)),
        Some("boolean") => Json::from(true),
        Some("array") => Json::Array(vec![]),
        Some("object") => Json::Object(Default::default()),
        other => panic!("no sample for {other:?}: {property}"),
    }
}

#[test]
fn every_config_key_the_schema_offers_is_one_the_binary_reads() {
    let mut config = serde_json::Map::new();
    let mut offered = 0;
    for (section, spec) in schema_sections() {
        let keys: serde_json::Map<String, Json> = spec["properties"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, p)| (k.clone(), sample(p)))
            .collect();
        offered += keys.len();
        config.insert(section, Json::Object(keys));
    }
    assert!(offered > 30, "{offered}");
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("every-key.json");
    std::fs::write(&values, serde_json::json!({ "config": config }).to_string()).unwrap();
    let base = chart().join("ci/default-values.yaml");
    let out = Command::new(helm())
        .args(["template", "vg"])
        .arg(chart())
        .arg("-f")
        .arg(&base)
        .arg("-f")
        .arg(&values)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = serde_yaml::Deserializer::from_slice(&out.stdout)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|d| !d.is_null())
        .collect();
    for component in ["broker", "gateway"] {
        let dir = tempfile::tempdir().unwrap();
        load_with_binary(dir.path(), component, &config_of(&docs, component));
    }
}

#[test]
fn the_schema_offers_every_key_of_the_binary_that_the_chart_does_not_set_itself() {
    // The defaults, printed from an empty file.
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let out = Command::new(VIRTGATE)
        .arg("--config")
        .arg(&empty)
        .arg("config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let defaults: toml::Value = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let mut problems = Vec::new();
    for (section, spec) in schema_sections() {
        let offered: BTreeSet<&str> = spec["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let set_by_chart: BTreeSet<&str> = CHART_SETS
            .iter()
            .find(|(s, _)| *s == section)
            .map(|(_, keys)| keys.iter().copied().collect())
            .unwrap_or_default();
        let known: BTreeSet<&str> = defaults[section.as_str()]
            .as_table()
            .unwrap_or_else(|| panic!("the binary has no [{section}] section"))
            .keys()
            .map(String::as_str)
            .collect();
        for key in known.difference(&offered) {
            if !set_by_chart.contains(key) {
                problems.push(format!(
                    "{section}.{key}: the binary reads it, but values.schema.json does not offer \
                     config.{section}.{key} (add it there, or to CHART_SETS if the chart sets it)"
                ));
            }
        }
        for key in offered.intersection(&set_by_chart) {
            problems.push(format!(
                "{section}.{key} is set by the chart and offered by the schema"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn pod_specs(docs: &[Value]) -> Vec<(String, &Value)> {
    let mut pods = Vec::new();
    for d in docs {
        let name = d["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match d["kind"].as_str() {
            Some("Deployment") => pods.push((name, &d["spec"]["template"]["spec"])),
            Some("Pod") => pods.push((name, &d["spec"])),
            _ => {}
        }
    }
    pods
}

#[test]
fn every_pod_runs_hardened_without_a_service_account_token() {
    for values in ci_values() {
        let docs = render(&[&values], &[], "1.33.0");
        let pods = pod_specs(&docs);
        assert_eq!(pods.len(), 3, "broker, gateway, test pod: {values}");
        for (name, pod) in pods {
            let what = format!("{values}: {name}");
            assert_eq!(pod["automountServiceAccountToken"], false, "{what}");
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
            assert_eq!(
                pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                "{what}"
            );
            for c in pod["containers"].as_sequence().unwrap() {
                let sc = &c["securityContext"];
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
                assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{what}");
                assert!(
                    sc["capabilities"]["add"].is_null(),
                    "{what}: no capability added"
                );
            }
        }
    }
}

#[test]
fn the_broker_is_one_recreated_pod_on_the_host_network_only_while_it_discovers() {
    let discovering = render(&["ci/default-values.yaml"], &[], "1.33.0");
    let broker = find(&discovering, "Deployment", "vg-virtgate-broker");
    assert_eq!(broker["spec"]["replicas"], 1);
    assert_eq!(broker["spec"]["strategy"]["type"], "Recreate");
    let pod = &broker["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    let toml = config_of(&discovering, "broker");
    assert!(toml.contains("discovery = true"), "{toml}");
    assert!(
        toml.contains("\"cali*\"") && toml.contains("\"cilium*\""),
        "{toml}"
    );
    let claim = find(
        &discovering,
        "PersistentVolumeClaim",
        "vg-virtgate-broker-data",
    );
    assert_eq!(
        claim["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
        "the inventory's volume outlives the release"
    );

    let static_only = render(&["ci/static-values.yaml"], &[], "1.33.0");
    let pod = &find(&static_only, "Deployment", "vg-virtgate-broker")["spec"]["template"]["spec"];
    assert!(pod["hostNetwork"].is_null() && pod["dnsPolicy"].is_null());
    assert!(config_of(&static_only, "broker").contains("discovery = false"));
}

#[test]
fn a_gateway_gets_the_time_to_drain_and_is_ready_only_with_the_inventory() {
    let docs = render(
        &["ci/default-values.yaml"],
        &[
            "config.proxy.drain_timeout=2m",
            "gateway.preStopSleepSeconds=7",
        ],
        "1.33.0",
    );
    let gateway = find(&docs, "Deployment", "vg-virtgate-gateway");
    let pod = &gateway["spec"]["template"]["spec"];
    assert_eq!(
        pod["terminationGracePeriodSeconds"], 137,
        "7 s of preStop sleep, 120 s of drain, 10 s of grace"
    );
    let container = &pod["containers"][0];
    assert_eq!(container["lifecycle"]["preStop"]["sleep"]["seconds"], 7);
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(
        gateway["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "proxy",
            "--broker",
            "https://vg-virtgate-broker.virtgate.svc:16580"
        ]
    );
    // Kubernetes before 1.30 has no sleep action: no preStop hook, and no time reserved for it.
    let old = render(&["ci/default-values.yaml"], &[], "1.25.0");
    let container = &find(&old, "Deployment", "vg-virtgate-gateway")["spec"]["template"]["spec"]
        ["containers"][0];
    assert!(container["lifecycle"].is_null(), "{container:?}");
    let pod = &find(&old, "Deployment", "vg-virtgate-gateway")["spec"]["template"]["spec"];
    assert_eq!(
        pod["terminationGracePeriodSeconds"], 70,
        "60 s of drain, 10 s of grace"
    );
}
