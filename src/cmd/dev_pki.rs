//! `virtgate up` on embedded defaults: a development PKI generated on first start (and reused on
//! later starts) for every TLS setting left unset, plus an admin rule so the generated admin
//! bundle can connect at once. Two CAs: the users' CA (`DevPki::users_ca`) signs people's
//! bundles and the gateway's server certificate; the backend CA signs only the gateway's
//! backend identity and is the one CA hosts trust.

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
    /// The gateway presents the development backend identity (not one from the configuration).
    dev_backend: bool,
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

impl Bootstrap {
    pub fn print_usage(&self, config: &Config) {
        let dev = &self.dev;
        let (gateway, port) = gateway_address(config, "localhost");
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
            "  users' CA       {} (signs people's certificates: `virtgate pki issue client`; never give it to a host)",
            absolute(&dev.users_ca.cert).display()
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
        if self.dev_backend {
            println!("  host setup      {}", host_setup(dev));
        }
        if dev.backend_reissued && self.dev_backend {
            for line in split_notice(dev) {
                println!("  CHANGED         {line}");
            }
        }
        if self.default_rule_added {
            println!("  access rule     {} may reach every host read-write (add [[proxy.rules]] to change)", virtgate_pki::ADMIN_DN);
        }
        for name in &dev.not_covered {
            println!("  warning         the existing server certificate does not cover {name}; delete {} to regenerate it", absolute(&dev.server.dir).display());
        }
    }
}

/// The name and port clients reach the gateway at, for the banner: this machine's short host
/// name (`unnamed` when it has none) and the first `proxy.listen` port (16514 without one).
fn gateway_address(config: &Config, unnamed: &str) -> (String, u16) {
    let port = config
        .proxy
        .listen
        .first()
        .map(|a| a.port())
        .unwrap_or(16514);
    let name = super::system_hostname();
    let gateway = if name.is_empty() {
        unnamed.to_string()
    } else {
        name
    };
    (gateway, port)
}

/// The banner's connection lines when the gateway runs on certificates of the operator's own:
/// a `virsh` template and what hosts must trust.
pub fn print_own_usage(config: &Config) {
    let (gateway, port) = gateway_address(config, "GATEWAY");
    println!(
        "  connect with    virsh -c 'qemu+tls://{gateway}:{port}/system?name=qemu://HOST/system&pkipath=DIR' (DIR: a client bundle from a CA of proxy.client_ca_files, allowed by [[proxy.rules]])"
    );
    let Some(backend) = &config.proxy.backend_cert_file else {
        return;
    };
    let chain = virtgate_pki::read_certs(backend).ok();
    let dn = chain
        .as_ref()
        .and_then(|c| c.first())
        .and_then(|c| virtgate_pki::subject_dn(c).ok());
    let issuer = chain
        .as_ref()
        .and_then(|c| c.first())
        .and_then(|c| virtgate_pki::parse_certificate(c, 0).ok())
        .map(|c| c.issuer);
    if let (Some(dn), Some(issuer)) = (dn, issuer) {
        println!(
            "  host setup      each libvirt host must trust only the CA that issued {} ({issuer}; never a CA that signs users' certificates) and set tls_allowed_dn_list = [\"{dn}\"] (docs/pki.md, Deploying)",
            absolute(backend).display()
        );
    }
}

/// What every libvirt host must do to trust the gateway and nobody else.
fn host_setup(dev: &DevPki) -> String {
    format!(
        "each libvirt host must trust only the backend CA {} (add it to libvirtd's ca_file; never the users' CA) and set tls_allowed_dn_list = [\"{}\"] (docs/pki.md, Deploying)",
        absolute(&dev.backend_ca.cert).display(),
        virtgate_pki::BACKEND_DN
    )
}

/// Printed once, on the start that split a single-CA data directory.
fn split_notice(dev: &DevPki) -> [String; 3] {
    let users = absolute(&dev.users_ca.cert);
    let backend = absolute(&dev.backend_ca.cert);
    [
        format!(
            "the gateway's backend identity ({}) was re-issued from a new backend CA, {}: it came from {}, which also signs users' certificates, so every host that trusted it let users in directly, around the gateway",
            absolute(&dev.backend.dir).display(),
            backend.display(),
            users.display()
        ),
        format!(
            "on every host: remove {} from libvirtd's ca_file (unless the host's own certificate comes from it; then re-issue that first), add {}, set tls_allowed_dn_list = [\"{}\"], restart libvirtd",
            users.display(),
            backend.display(),
            virtgate_pki::BACKEND_DN
        ),
        "until then the gateway cannot reach those hosts; admin and user bundles keep working (the users' CA did not change)".to_string(),
    ]
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
    let dev_users_ca = p.client_ca_files.is_empty();
    if dev_users_ca {
        p.client_ca_files.push(dev.users_ca.cert.clone());
    }
    p.backend_cert_file
        .get_or_insert_with(|| dev.backend.cert.clone());
    p.backend_key_file
        .get_or_insert_with(|| dev.backend.key.clone());
    let dev_backend = p.backend_cert_file.as_ref() == Some(&dev.backend.cert);
    let default_rule_added = p.rules.is_empty();
    if default_rule_added {
        p.rules.push(Rule {
            identity: virtgate_pki::ADMIN_DN.to_string(),
            hosts: vec!["*".into()],
            mode: Mode::Rw,
        });
    }
    fill_broker_identity(config);
    // The broker holds the users' CA key of the dev PKI: its bypass check then knows for
    // certain whether a host lets users in.
    if dev_users_ca
        && config.broker.user_ca_key_file.is_none()
        && config.broker.user_ca_files.contains(&dev.users_ca.cert)
    {
        config.broker.user_ca_key_file = Some(dev.users_ca.key.clone());
    }
    if dev.backend_reissued && dev_backend {
        tracing::warn!(
            backend_ca = %absolute(&dev.backend_ca.cert).display(),
            users_ca = %absolute(&dev.users_ca.cert).display(),
            "the gateway's backend identity was re-issued from a new backend CA; every libvirt host must trust it instead of the users' CA and set tls_allowed_dn_list"
        );
    }
    Ok(Some(Bootstrap {
        dev,
        default_rule_added,
        dev_backend,
    }))
}

/// The broker's probes present the gateway's backend identity unless told otherwise, so hosts
/// see one client identity; the CAs that sign the gateway's users are the ones its bypass
/// check looks for in hosts' certificate requests.
fn fill_broker_identity(config: &mut Config) {
    if config.broker.client_cert_file.is_none() && config.broker.client_key_file.is_none() {
        config.broker.client_cert_file = config.proxy.backend_cert_file.clone();
        config.broker.client_key_file = config.proxy.backend_key_file.clone();
    }
    if config.proxy.enabled && config.broker.user_ca_files.is_empty() {
        config.broker.user_ca_files = config.proxy.client_ca_files.clone();
    }
}
