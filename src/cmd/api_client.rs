//! Reaching the broker's API from the CLI and from `virtgate proxy`: which broker, how it is
//! verified (CA or pin; for the local broker of `virtgate up`, its development CA is found
//! without being named), and which token goes with the requests.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tracing::warn;
use virtgate_api::{BrokerTrust, BrokerUrl, Client, ClientIdentity, Scheme};
use virtgate_pki::Pin;

use crate::config::Config;

#[derive(clap::Args, Clone)]
pub struct ClientArgs {
    /// Broker API base URL (default: https://<broker.listen> when the broker serves TLS there,
    /// http://<broker.listen> otherwise).
    #[arg(long, value_name = "URL", global = true)]
    pub broker: Option<String>,
    /// PEM file of the CA that issued the broker's certificate (default for the local broker:
    /// the development CA of `virtgate up`, or the pin of broker.tls_cert_file).
    #[arg(long, value_name = "FILE", global = true)]
    pub broker_ca: Option<PathBuf>,
    /// The broker's key pin instead of (or besides) a CA: sha256:HEX or pin-sha256:BASE64.
    #[arg(long, value_name = "PIN", global = true)]
    pub broker_pin: Option<Pin>,
    /// File holding the admin token (default: <broker.data_dir>/admin.token); reads send it too.
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
}

/// Where a broker is and how its certificate is verified.
pub struct Target {
    pub url: BrokerUrl,
    pub trust: BrokerTrust,
    /// Whether the URL names the broker of this configuration (`broker.listen`).
    pub local: bool,
}

/// `https://` or `http://<broker.listen>`, with a wildcard listen address replaced by loopback.
/// HTTPS when the configuration gives the broker a certificate, or `virtgate up` made one.
pub fn default_url(config: &Config) -> String {
    let mut listen = config.broker.listen;
    if listen.ip().is_unspecified() {
        listen.set_ip(if listen.is_ipv4() {
            [127, 0, 0, 1].into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let tls = config.broker.serves_tls()
        || super::broker_tls::dev_files(&config.broker.data_dir)
            .cert
            .is_file();
    format!("{}://{listen}", if tls { "https" } else { "http" })
}

/// The broker at `url` (default: [`default_url`]), verified by `ca` and/or `pin`; for the local
/// broker without either, by `virtgate up`'s development CA or the pin of broker.tls_cert_file.
pub fn target(
    config: &Config,
    url: Option<&str>,
    ca: Option<PathBuf>,
    pin: Option<Pin>,
) -> anyhow::Result<Target> {
    if let (None, Some(running)) = (url, super::runtime::found()) {
        // The broker this machine runs, as its runtime file describes it.
        let url = BrokerUrl::parse(&running.api).context("the runtime file's API URL")?;
        let mut trust = BrokerTrust { ca_file: ca, pin };
        if trust.is_empty() {
            trust = BrokerTrust {
                ca_file: running.api_ca_file.clone(),
                pin: running.api_pin.as_deref().and_then(|p| p.parse().ok()),
            };
        }
        return Ok(Target {
            url,
            trust,
            local: true,
        });
    }
    let url = match url {
        Some(url) => BrokerUrl::parse(url).context("--broker")?,
        None => BrokerUrl::parse(&default_url(config)).context("broker.listen")?,
    };
    let listen = config.broker.listen;
    let local = url.port() == listen.port()
        && (url.is_loopback()
            || url
                .host()
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip == listen.ip()));
    let mut trust = BrokerTrust { ca_file: ca, pin };
    if url.scheme() == Scheme::Https && trust.is_empty() && local {
        trust = local_trust(config);
    }
    Ok(Target { url, trust, local })
}

/// What this configuration says about its own broker's certificate: the pin of
/// broker.tls_cert_file when it is set and readable, else the CA `virtgate up` issued it from.
fn local_trust(config: &Config) -> BrokerTrust {
    if let Some(cert) = &config.broker.tls_cert_file {
        let pin = virtgate_pki::read_certs(cert)
            .ok()
            .and_then(|chain| chain.first().and_then(|c| virtgate_pki::spki_pin(c).ok()));
        return BrokerTrust { ca_file: None, pin };
    }
    let ca = super::broker_tls::dev_files(&config.broker.data_dir).ca_cert;
    BrokerTrust {
        ca_file: ca.is_file().then_some(ca),
        pin: None,
    }
}

/// A client of `target`: HTTPS verified as the target says, offering `identity` if given.
pub fn client(target: &Target, identity: Option<&ClientIdentity>) -> anyhow::Result<Client> {
    let client = Client::new(target.url.clone());
    if target.url.scheme() == Scheme::Http {
        return Ok(client);
    }
    Ok(client.with_tls(&target.trust, identity)?)
}

/// Reads a token file; warns when group or others may read it.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the token from {} (check the path, or run as the user that owns it)",
            path.display()
        )
    })?;
    if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
        warn!(path = %path.display(), "the token file is readable by group or others; chmod 600 it");
    }
    let token = token.trim();
    anyhow::ensure!(
        !token.is_empty(),
        "the token file {} is empty",
        path.display()
    );
    Ok(token.to_string())
}

/// A client for reading the inventory. It sends a token when it has one: `--token-file`, or for
/// the local broker the admin token or the read token, if this user can read them (a broker
/// listening beyond loopback wants one of them, or a client certificate).
pub fn reader(config: &Config, args: &ClientArgs) -> anyhow::Result<Client> {
    let target = target(
        config,
        args.broker.as_deref(),
        args.broker_ca.clone(),
        args.broker_pin,
    )?;
    let client = client(&target, None)?;
    if let Some(file) = &args.token_file {
        return Ok(client.with_token(read_token(file)?));
    }
    if !target.local {
        return Ok(client);
    }
    let token = [
        Some(admin_token_file(config)),
        config.broker.read_token_file.clone(),
    ]
    .into_iter()
    .flatten()
    .find_map(|file| std::fs::read_to_string(file).ok())
    .map(|t| t.trim().to_string())
    .filter(|t| !t.is_empty());
    Ok(match token {
        Some(token) => client.with_token(token),
        None => client,
    })
}

/// The admin token of the broker this machine runs (its runtime file), else of this
/// configuration's data directory.
fn admin_token_file(config: &Config) -> PathBuf {
    match super::runtime::found() {
        Some(running) => running.admin_token_file.clone(),
        None => config
            .broker
            .data_dir
            .join(virtgate_broker::ADMIN_TOKEN_FILE),
    }
}

/// What to say when a file under a relative data directory is missing: where it was looked
/// for, and how to point at the right one.
pub fn relative_hint(config: &Config) -> String {
    let dir = &config.broker.data_dir;
    if dir.is_absolute() || super::runtime::found().is_some() {
        return String::new();
    }
    let cwd = std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|_| "?".into());
    format!(
        "; broker.data_dir is the relative {} and the working directory is {cwd}: no `virtgate up` or `virtgate broker` is running on this machine (none left a runtime file), so run this where it was started, or pass --config FILE",
        dir.display()
    )
}

/// A client for changing the inventory: it carries the admin token.
pub fn admin(config: &Config, args: &ClientArgs) -> anyhow::Result<Client> {
    let token_file = args
        .token_file
        .clone()
        .unwrap_or_else(|| admin_token_file(config));
    let token = read_token(&token_file).with_context(|| {
        format!(
            "the admin token is needed to change the inventory (use --token-file, or run as the \
             user that runs the broker){}",
            relative_hint(config)
        )
    })?;
    let target = target(
        config,
        args.broker.as_deref(),
        args.broker_ca.clone(),
        args.broker_pin,
    )?;
    Ok(client(&target, None)?.with_token(token))
}
