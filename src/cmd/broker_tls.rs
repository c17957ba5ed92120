//! `virtgate up`: the broker's API over HTTPS. When `broker.tls_cert_file` is unset, a
//! development certificate for the API is issued from the development users' CA (the one `DevPki`
//! exposes) into `<data_dir>/pki/broker/` (0700 directory, 0600 key) on first start and reused
//! on later starts. Its SANs: the machine's host names, `localhost`, 127.0.0.1, ::1 and the
//! listen address (every announceable address for a wildcard one).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use virtgate_pki::{Ca, Output, ServerFiles, ServerRequest};

use crate::config::Config;

/// Subdirectory of the development PKI that holds the API's certificate.
pub const BROKER_DIR: &str = "broker";

/// The development certificate of the API: `servercert.pem`, `serverkey.pem` and
/// `cacert.pem` (the development users' CA: what clients verify the broker with).
pub fn dev_files(data_dir: &Path) -> ServerFiles {
    ServerFiles::in_dir(&data_dir.join(virtgate_pki::DEV_PKI_DIR).join(BROKER_DIR))
}

/// What `prepare` did, to tell the operator.
pub struct BrokerTls {
    pub files: ServerFiles,
    pub created: bool,
    /// Names and addresses the reused certificate does not cover.
    pub not_covered: Vec<String>,
    /// The CA added to `broker.proxy_ca_files` (proxies present the backend identity it issued).
    pub proxy_ca: Option<PathBuf>,
}

impl BrokerTls {
    pub fn print_usage(&self) {
        let state = if self.created { "created" } else { "reused" };
        println!(
            "  API certificate {} ({state}; clients verify it with {})",
            self.files.cert.display(),
            self.files.ca_cert.display()
        );
        if let Some(ca) = &self.proxy_ca {
            println!(
                "  proxies         may read the inventory with a certificate from {} (their backend identity)",
                ca.display()
            );
        }
        for name in &self.not_covered {
            println!(
                "  warning         the API certificate does not cover {name}; delete {} to have it made again",
                self.files.dir.display()
            );
        }
    }
}

/// Gives the broker a development certificate when `broker.tls_cert_file` is unset, and lets
/// proxies holding the development backend identity read the inventory on a listener beyond
/// loopback. Does nothing when the broker's TLS files are configured.
pub fn prepare(config: &mut Config) -> anyhow::Result<Option<BrokerTls>> {
    if config.broker.tls_cert_file.is_some() || config.broker.tls_key_file.is_some() {
        return Ok(None);
    }
    let (names, ips) = subject_names(config);
    let dev = virtgate_pki::bootstrap_dev(&config.broker.data_dir, &names, &ips).context(
        "cannot create the development PKI for the API's certificate (set \
         broker.tls_cert_file and broker.tls_key_file to use your own)",
    )?;
    let files = dev_files(&config.broker.data_dir);
    let (created, not_covered) = match (files.cert.is_file(), files.key.is_file()) {
        (true, true) => (false, not_covered(&files.cert, &names, &ips)),
        (false, false) => {
            issue(&dev.users_ca.dir, &files, &names, &ips)?;
            (true, Vec::new())
        }
        _ => anyhow::bail!(
            "{} holds a certificate without its key or a key without its certificate; delete \
             the directory to have both made again",
            files.dir.display()
        ),
    };
    config.broker.tls_cert_file = Some(files.cert.clone());
    config.broker.tls_key_file = Some(files.key.clone());
    let dev_backend = config.proxy.backend_cert_file.as_deref() == Some(dev.backend.cert.as_path());
    let proxy_ca = (!config.broker.listens_on_loopback()
        && config.broker.proxy_ca_files.is_empty()
        && dev_backend)
        .then(|| dev.backend_ca.cert.clone());
    if let Some(ca) = &proxy_ca {
        config.broker.proxy_ca_files.push(ca.clone());
    }
    Ok(Some(BrokerTls {
        files,
        created,
        not_covered,
        proxy_ca,
    }))
}

fn issue(
    ca_dir: &Path,
    files: &ServerFiles,
    names: &[String],
    ips: &[IpAddr],
) -> anyhow::Result<()> {
    let ca = Ca::load(ca_dir)?;
    let request = ServerRequest {
        name: names[0].clone(),
        dns: names[1..].to_vec(),
        ips: ips.to_vec(),
        days: virtgate_pki::DEV_DAYS,
    };
    virtgate_pki::issue_server(&ca, &request, &Output::new(&files.dir))
        .context("cannot issue the API's development certificate")?;
    Ok(())
}

/// The names (first: the subject's) and addresses clients may reach the API by.
fn subject_names(config: &Config) -> (Vec<String>, Vec<IpAddr>) {
    let mut names: Vec<String> = Vec::new();
    for name in [
        super::system_hostname(),
        gethostname::gethostname().to_string_lossy().into_owned(),
        "localhost".to_string(),
    ] {
        if !name.is_empty() && !names.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
            names.push(name);
        }
    }
    let mut ips: Vec<IpAddr> = vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()];
    let listen = config.broker.listen.ip();
    let more = if listen.is_unspecified() {
        virtgate_discovery::InterfaceSelector::new(&config.discovery.interfaces)
            .and_then(|s| s.announceable_addresses())
            .unwrap_or_default()
    } else {
        vec![listen]
    };
    for ip in more {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    (names, ips)
}

/// The names and addresses the certificate in `cert` does not cover.
fn not_covered(cert: &Path, names: &[String], ips: &[IpAddr]) -> Vec<String> {
    let leaf = virtgate_pki::read_certs(cert)
        .ok()
        .and_then(|chain| chain.into_iter().next())
        .and_then(|der| virtgate_pki::parse_certificate(&der, 0).ok());
    names
        .iter()
        .cloned()
        .chain(ips.iter().map(IpAddr::to_string))
        .filter(|n| {
            !leaf
                .as_ref()
                .is_some_and(|c| virtgate_pki::name_is_covered(c, n))
        })
        .collect()
}
