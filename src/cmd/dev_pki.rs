//! `virtgate up` on embedded defaults: a development PKI generated on first start (and reused on
//! later starts) for every TLS setting left unset, plus an admin rule so the generated admin
//! bundle can connect at once.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use virtgate_pki::DevPki;
use virtgate_proxy::{Mode, Rule};

use crate::config::Config;

/// What `up` generated or reused, to tell the operator how to connect.
pub struct Bootstrap {
    dev: DevPki,
    default_rule_added: bool,
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

impl Bootstrap {
    pub fn print_usage(&self, config: &Config) {
        let dev = &self.dev;
        let port = config
            .proxy
            .listen
            .first()
            .map(|a| a.port())
            .unwrap_or(16514);
        let name = super::system_hostname();
        let gateway = if name.is_empty() {
            "localhost".to_string()
        } else {
            name
        };
        let state = if dev.created.is_empty() {
            "reused"
        } else {
            "created"
        };
        println!(
            "  dev PKI         {} ({state})",
            absolute(&dev.root).display()
        );
        println!(
            "  admin bundle    {} (client certificate, DN {})",
            absolute(&dev.admin.dir).display(),
            virtgate_pki::ADMIN_DN
        );
        println!(
            "  connect with    virsh -c 'qemu+tls://{gateway}:{port}/system?name=qemu://HOST/system&pkipath={}'",
            absolute(&dev.admin.dir).display()
        );
        println!(
            "  host setup      each libvirt host must trust {} (its ca_file) and allow DN \"{}\" (docs/pki.md)",
            absolute(&dev.ca.cert).display(),
            virtgate_pki::BACKEND_DN
        );
        if self.default_rule_added {
            println!("  access rule     {} may reach every host read-write (add [[proxy.rules]] to change)", virtgate_pki::ADMIN_DN);
        }
        for name in &dev.not_covered {
            println!("  warning         the existing server certificate does not cover {name}; delete {} to regenerate it", absolute(&dev.server.dir).display());
        }
    }
}

/// Fills the proxy's (and the broker's probe) TLS settings that are unset with the development
/// PKI in `<broker.data_dir>/pki`. Does nothing when every setting is given.
pub fn prepare_up(config: &mut Config) -> anyhow::Result<Option<Bootstrap>> {
    let p = &config.proxy;
    let complete = p.server_cert_file.is_some()
        && p.server_key_file.is_some()
        && !p.client_ca_files.is_empty()
        && p.backend_cert_file.is_some()
        && p.backend_key_file.is_some();
    if !p.enabled || complete {
        fill_broker_identity(config);
        return Ok(None);
    }
    let hostnames: Vec<String> = [
        super::system_hostname(),
        gethostname::gethostname().to_string_lossy().into_owned(),
    ]
    .into_iter()
    .filter(|h| !h.is_empty() && h != "localhost")
    .collect::<std::collections::BTreeSet<_>>()
    .into_iter()
    .collect();
    let ips: Vec<IpAddr> = virtgate_discovery::InterfaceSelector::new(&config.discovery.interfaces)
        .and_then(|s| s.announceable_addresses())
        .unwrap_or_default();
    let dev = virtgate_pki::bootstrap_dev(&config.broker.data_dir, &hostnames, &ips)
        .context("cannot create the development PKI (set the proxy.*_file keys to use your own certificates)")?;
    let p = &mut config.proxy;
    p.server_cert_file
        .get_or_insert_with(|| dev.server.cert.clone());
    p.server_key_file
        .get_or_insert_with(|| dev.server.key.clone());
    if p.client_ca_files.is_empty() {
        p.client_ca_files.push(dev.ca.cert.clone());
    }
    p.backend_cert_file
        .get_or_insert_with(|| dev.backend.cert.clone());
    p.backend_key_file
        .get_or_insert_with(|| dev.backend.key.clone());
    let default_rule_added = p.rules.is_empty();
    if default_rule_added {
        p.rules.push(Rule {
            identity: virtgate_pki::ADMIN_DN.to_string(),
            hosts: vec!["*".into()],
            mode: Mode::Rw,
        });
    }
    fill_broker_identity(config);
    Ok(Some(Bootstrap {
        dev,
        default_rule_added,
    }))
}

/// The broker's probes present the gateway's backend identity unless told otherwise, so hosts
/// see one client identity.
fn fill_broker_identity(config: &mut Config) {
    if config.broker.client_cert_file.is_none() && config.broker.client_key_file.is_none() {
        config.broker.client_cert_file = config.proxy.backend_cert_file.clone();
        config.broker.client_key_file = config.proxy.backend_key_file.clone();
    }
}
