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
    let problems: Vec<String> = [
        config.broker.validate(),
        config.proxy.validate(),
        config.agent.validate(),
    ]
    .concat();
    if !problems.is_empty() {
        bail!(
            "invalid configuration:\n  {}\nfix the keys named above (see docs/configuration.md for every key)",
            problems.join("\n  ")
        );
    }
    Ok(Loaded { config, file })
}

/// Figment's own messages prefix keys with the profile and hide the source in a long sentence;
/// this says which key is wrong, where it came from, and what to do.
fn describe(errors: figment::Error) -> anyhow::Error {
    let mut lines = Vec::new();
    for e in errors {
        let key = e.path.join(".");
        let key = key.strip_prefix("default.").unwrap_or(&key).to_string();
        let origin = match &e.metadata {
            Some(md) => match &md.source {
                Some(source) => format!("{} ({})", source, md.name),
                None => md.name.to_string(),
            },
            None => "configuration".to_string(),
        };
        let key = if key.is_empty() {
            "(top level)".to_string()
        } else {
            key
        };
        lines.push(format!("key `{key}` in {origin}: {}", e.kind));
    }
    anyhow::anyhow!(
        "invalid configuration:\n  {}\nfix the key or value named above (see docs/configuration.md for every key)",
        lines.join("\n  ")
    )
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
    fn defaults_print_as_toml_that_reads_back() {
        let text = to_redacted_toml(&Config::default()).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, Config::default());
    }
}
