//! Layered configuration: built-in defaults < TOML file < `VIRTGATE_*` environment < flags.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use virtgate_agent::AgentConfig;
use virtgate_broker::BrokerConfig;
use virtgate_discovery::{AdvertiseConfig, DiscoveryConfig};
use virtgate_proxy::ProxyConfig;

/// The top-level sections; `VIRTGATE_<SECTION>__…` variables configure them.
const SECTIONS: &[&str] = &[
    "log",
    "discovery",
    "advertise",
    "broker",
    "proxy",
    "runtime",
    "agent",
];

/// Read when `--config` is not given and the file exists.
pub const SYSTEM_CONFIG_FILE: &str = "/etc/virtgate/virtgate.toml";

/// The whole configuration. Every section rejects keys it does not know.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub log: LogConfig,
    pub discovery: DiscoveryConfig,
    pub advertise: AdvertiseConfig,
    pub broker: BrokerConfig,
    pub proxy: ProxyConfig,
    pub runtime: RuntimeConfig,
    /// `virtgate agent`, on libvirt hosts.
    pub agent: AgentConfig,
}

/// The async runtime that runs everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Worker threads for the broker, its API, discovery and the proxy's accept loops; 0 = one
    /// per CPU, 1 = a single-thread runtime. Relayed connections do not run here but on
    /// `proxy.connection_threads`.
    pub worker_threads: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `RUST_LOG`-style filter, e.g. `info,virtgate_discovery=debug`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// One command-line flag that overrides a configuration key.
pub struct Override {
    pub key: &'static str,
    pub value: toml::Value,
}

impl Override {
    pub fn new(key: &'static str, value: impl Into<toml::Value>) -> Self {
        Self {
            key,
            value: value.into(),
        }
    }
}

/// The effective configuration and the file it was read from, if any.
pub struct Loaded {
    pub config: Config,
    pub file: Option<PathBuf>,
}

pub fn load(explicit_file: Option<&Path>, overrides: Vec<Override>) -> anyhow::Result<Loaded> {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    let file = match explicit_file {
        Some(path) => {
            if !path.exists() || path.is_dir() {
                bail!(
                    "config file {} does not exist or is not a file; pass an existing TOML file to --config",
                    path.display()
                );
            }
            Some(path.to_path_buf())
        }
        None => Some(PathBuf::from(SYSTEM_CONFIG_FILE)).filter(|p| p.is_file()),
    };
    if let Some(path) = &file {
        figment = figment.merge(Toml::file_exact(path));
    }
    // Only variables naming a section are configuration: others that share the prefix (the
    // scripts' VIRTGATE_BIN, VIRTGATE_CONFIG) are not. Unknown keys inside a section still fail.
    figment = figment.merge(Env::prefixed("VIRTGATE_").split("__").filter(|key| {
        let section = key.as_str().split('.').next().unwrap_or_default();
        SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(section))
    }));
    for o in overrides {
        figment = figment.merge(Serialized::global(o.key, o.value));
    }
    let config = figment.extract::<Config>().map_err(describe)?;
    let mut problems: Vec<String> = [
        config.broker.validate(),
        config.proxy.validate(),
        config.agent.validate(),
    ]
    .concat();
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&config.log.filter) {
        problems.push(format!(
            "log.filter: {:?} is not a log filter ({e}); use e.g. \"info,virtgate_discovery=debug\"",
            config.log.filter
        ));
    }
    if !problems.is_empty() {
        bail!(
            "invalid configuration:\n  {}\nfix the keys named above (docs/configuration.md lists every key)",
            problems.join("\n  ")
        );
    }
    Ok(Loaded { config, file })
}

/// Figment's own messages prefix keys with the profile and hide the source in a long sentence;
/// this says which key is wrong, where it came from, and what to do — in words, without Rust
/// type names.
fn describe(errors: figment::Error) -> anyhow::Error {
    let mut lines = Vec::new();
    for e in errors {
        let key = e.path.join(".");
        let key = key.strip_prefix("default.").unwrap_or(&key).to_string();
        let origin = match &e.metadata {
            Some(md) => match &md.source {
                Some(figment::Source::File(path)) => format!("in {}", path.display()),
                Some(source) => format!("in {source} ({})", md.name),
                None if md.name.contains("environment") => {
                    "in the VIRTGATE_ environment variables".to_string()
                }
                None => format!("in {}", md.name),
            },
            None => "in the configuration".to_string(),
        };
        let what = explain(&e.kind, &key);
        if key.is_empty() {
            lines.push(format!("{origin}: {what}"));
        } else {
            lines.push(format!("{key} {origin}: {what}"));
        }
    }
    anyhow::anyhow!(
        "invalid configuration:\n  {}\nfix what is named above (docs/configuration.md lists every key)",
        lines.join("\n  ")
    )
}

/// One deserialisation error in words.
fn explain(kind: &figment::error::Kind, key: &str) -> String {
    use figment::error::Kind;
    let section = key.rsplit_once('.').map_or("the file", |(s, _)| s);
    match kind {
        Kind::UnknownField(field, expected) => format!(
            "unknown key {field:?}; {section} takes: {}",
            expected.join(", ")
        ),
        Kind::UnknownVariant(value, expected) => {
            format!(
                "unknown value {value:?}; use one of: {}",
                expected.join(", ")
            )
        }
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            format!("{} is not {}", found(actual), expected_in_words(expected))
        }
        Kind::Message(message) => message_in_words(message),
        Kind::MissingField(field) => format!("{field:?} is missing; add it"),
        Kind::DuplicateField(field) => format!("{field:?} is given twice; keep one"),
        other => other.to_string().replace('`', ""),
    }
}

fn found(actual: &figment::error::Actual) -> String {
    use figment::error::Actual;
    match actual {
        Actual::Bool(v) => v.to_string(),
        Actual::Unsigned(v) => v.to_string(),
        Actual::Signed(v) => v.to_string(),
        Actual::Float(v) => v.to_string(),
        Actual::Str(v) => format!("{v:?}"),
        Actual::Seq => "a list".into(),
        Actual::Map => "a table".into(),
        other => other.to_string().replace('`', ""),
    }
}

fn expected_in_words(expected: &str) -> String {
    match expected {
        "u8" => "a whole number from 0 to 255".into(),
        "u16" => "a whole number from 0 to 65535 (a port)".into(),
        "u32" => "a whole number from 0 to 4294967295".into(),
        "u64" | "usize" => "a whole number, 0 or more".into(),
        "i64" | "isize" | "i32" => "a whole number".into(),
        "a boolean" => "true or false".into(),
        "a sequence" => "a list, e.g. [\"a\", \"b\"] (in the environment too)".into(),
        "a string" => "a string in quotes".into(),
        "socket address" => {
            "an address HOST:PORT with an IP address, e.g. 127.0.0.1:16580 or [::1]:16580".into()
        }
        "IP address" => "an IP address, e.g. 192.0.2.7 or 2001:db8::7".into(),
        other => other.replace('`', ""),
    }
}

fn message_in_words(message: &str) -> String {
    let m = message.replace('`', "");
    if m.contains("invalid socket address syntax") {
        "not an address: write HOST:PORT with an IP address, e.g. 127.0.0.1:16580, [::1]:16580 or 0.0.0.0:16514".into()
    } else if m.contains("invalid IP address syntax") {
        "not an IP address: write e.g. 192.0.2.7 or 2001:db8::7".into()
    } else if m.contains("duration")
        || m.contains("unknown time unit")
        || m.contains("expected number")
    {
        format!("{m}; write a duration such as 500ms, 30s, 10m or 14d")
    } else if m.contains("TOML parse error") || m.contains("expected") && m.contains("line") {
        format!("the file is not valid TOML: {m}")
    } else {
        m
    }
}

/// `VIRTGATE_<X>__…` variables whose section X is unknown: probably misspelled, so never read.
pub fn unknown_sections() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| {
            let Some(rest) = name.strip_prefix("VIRTGATE_") else {
                return false;
            };
            let Some((section, _)) = rest.split_once("__") else {
                return false;
            };
            !SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(section))
        })
        .collect()
}

/// Keys whose values must never be printed. Keys naming files (`read_token_file`) hold paths,
/// which are printed.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    if key.ends_with("_file") || key.ends_with("_files") {
        return false;
    }
    ["token", "password", "passphrase", "secret", "private_key"]
        .iter()
        .any(|s| key.contains(s))
}

fn redact(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, v) in table.iter_mut() {
                if is_secret_key(key) && !matches!(v, toml::Value::Table(_)) {
                    *v = toml::Value::String("<redacted>".into());
                } else {
                    redact(v);
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// Every key the configuration accepts, dotted (`broker.probe_interval`), with the keys of one
/// entry of each array of tables (`broker.hosts.name`). Derived from the types themselves, so
/// it cannot miss a key: unset optional keys serialise as null in JSON.
#[cfg(test)]
pub fn all_keys() -> Vec<String> {
    let mut sample = Config::default();
    sample.broker.hosts.push(virtgate_broker::StaticHost {
        name: "h".into(),
        addresses: vec![],
        port: 1,
    });
    sample.proxy.rules.push(virtgate_proxy::Rule {
        identity: "i".into(),
        hosts: vec![],
        mode: virtgate_proxy::Mode::Ro,
    });
    sample
        .proxy
        .host_listeners
        .push(virtgate_proxy::HostListener {
            listen: ([127, 0, 0, 1], 1).into(),
            host: "h".into(),
        });
    let value = serde_json::to_value(&sample).expect("the configuration serialises");
    let mut keys = Vec::new();
    flatten("", &value, &mut keys);
    keys
}

fn flatten(prefix: &str, value: &serde_json::Value, keys: &mut Vec<String>) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let path = key(k);
                match v {
                    serde_json::Value::Object(inner)
                        if !inner.is_empty() && !is_free_map(&path) =>
                    {
                        flatten(&path, v, keys)
                    }
                    serde_json::Value::Array(items)
                        if items.first().is_some_and(serde_json::Value::is_object) =>
                    {
                        keys.push(path.clone());
                        flatten(&path, &items[0], keys);
                    }
                    _ => keys.push(path),
                }
            }
        }
        _ => keys.push(prefix.to_string()),
    }
}

/// Tables whose keys are the user's (TXT entries), not the configuration's.
fn is_free_map(path: &str) -> bool {
    path == "advertise.txt"
}

/// Keys that are unset in `config` (optional keys without a default).
pub fn unset_keys(config: &Config) -> Vec<String> {
    let Ok(value) = serde_json::to_value(config) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut all = Vec::new();
    flatten("", &value, &mut all);
    for key in all {
        let mut v = &value;
        for part in key.split('.') {
            v = &v[part];
        }
        if v.is_null() {
            out.push(key);
        }
    }
    out
}

/// The effective configuration as JSON, secrets replaced by `<redacted>`.
pub fn to_redacted_json(config: &Config) -> anyhow::Result<serde_json::Value> {
    let mut value = toml::Value::try_from(config).context("serialising the configuration")?;
    redact(&mut value);
    let mut json = serde_json::to_value(&value)?;
    // Unset keys as null, so the JSON shows every key.
    let unset = unset_keys(config);
    for key in unset {
        let parts: Vec<&str> = key.split('.').collect();
        let mut at = &mut json;
        for part in &parts[..parts.len() - 1] {
            at = &mut at[*part];
        }
        at[*parts.last().expect("keys have a part")] = serde_json::Value::Null;
    }
    Ok(json)
}

/// The effective configuration as TOML, secrets replaced by `<redacted>`.
pub fn to_redacted_toml(config: &Config) -> anyhow::Result<String> {
    let mut value = toml::Value::try_from(config).context("serialising the configuration")?;
    redact(&mut value);
    toml::to_string_pretty(&value).context("printing the configuration")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let mut value: toml::Value = toml::from_str(
            r#"
            admin_token = "abc"
            [broker]
            db_password = "hunter2"
            read_token_file = "/etc/virtgate/read.token"
            port = 1
            [[users]]
            name = "alice"
            secret = "s3"
            "#,
        )
        .unwrap();
        redact(&mut value);
        let text = toml::to_string(&value).unwrap();
        assert!(
            !text.contains("abc") && !text.contains("hunter2") && !text.contains("s3"),
            "{text}"
        );
        assert!(
            text.contains("alice") && text.contains("port = 1"),
            "{text}"
        );
        assert!(
            text.contains("/etc/virtgate/read.token"),
            "paths of token files are not secrets: {text}"
        );
    }

    #[test]
    fn every_key_the_configuration_accepts_is_documented_in_docs_configuration_md() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/configuration.md"
        ))
        .unwrap();
        let keys = all_keys();
        assert!(keys.contains(&"proxy.listen".to_string()), "{keys:?}");
        assert!(keys.contains(&"broker.hosts.port".to_string()), "{keys:?}");
        assert!(
            keys.contains(&"proxy.crl_file".to_string()),
            "unset keys count: {keys:?}"
        );
        // Each key appears as `section.key`, or as `key` in its section's table; keys of an
        // array of tables appear as `name` in the text about it.
        let missing: Vec<&String> = keys
            .iter()
            .filter(|key| {
                let (section, rest) = key.split_once('.').unwrap_or((key.as_str(), ""));
                let in_section = doc
                    .split("\n## ")
                    .find(|s| s.starts_with(&format!("`[{section}]`")))
                    .unwrap_or("");
                let last = rest.rsplit('.').next().unwrap_or(rest);
                !(doc.contains(&format!("`{key}`"))
                    || in_section.contains(&format!("`{rest}`"))
                    || in_section.contains(&format!("`{last}`")))
            })
            .collect();
        assert!(
            missing.is_empty(),
            "docs/configuration.md does not document: {missing:?}"
        );
    }

    #[test]
    fn unset_optional_keys_are_listed_so_the_output_works_as_a_template() {
        let unset = unset_keys(&Config::default());
        for key in [
            "proxy.server_cert_file",
            "broker.client_cert_file",
            "advertise.hostname",
            "proxy.crl_file",
        ] {
            assert!(unset.contains(&key.to_string()), "{key}: {unset:?}");
        }
    }

    #[test]
    fn defaults_print_as_toml_that_reads_back() {
        let text = to_redacted_toml(&Config::default()).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, Config::default());
    }
}
