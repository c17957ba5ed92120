//! Announcing this host on the LAN.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use mdns_sd::{IfKind, IfPredicate, ServiceDaemon, ServiceInfo};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::interfaces::InterfaceSelector;
use crate::names::{host_label, instance_name_for};
use crate::{DiscoveryError, DEFAULT_LIBVIRT_TLS_PORT, SERVICE_TYPE, TXT_VERSION};

/// TXT keys virtgate sets itself; `advertise.txt` cannot override them.
const RESERVED_TXT_KEYS: &[&str] = &["txtvers", "hostname", "transport", "auth", "uri"];

/// Keep the whole TXT record well below one Ethernet frame (RFC 6763 §6.2): bigger records get
/// IP-fragmented and are easily lost on real networks.
const MAX_TXT_BYTES: usize = 1300;

/// What to announce. Hostname `None` means the machine's short host name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdvertiseConfig {
    /// Short host name; announced as `<hostname>.local.` and in the instance name.
    pub hostname: Option<String>,
    /// The libvirt TLS port clients should use.
    pub port: u16,
    /// Informational TXT `transport` (libvirt URI transport), e.g. `tls`.
    pub transport: String,
    /// Informational TXT `auth`: how the host authenticates clients (`tls`, `sasl`, `none`).
    pub auth: String,
    /// Extra TXT entries. Informational only: nothing in TXT is trusted.
    pub txt: BTreeMap<String, String>,
}

impl Default for AdvertiseConfig {
    fn default() -> Self {
        Self {
            hostname: None,
            port: DEFAULT_LIBVIRT_TLS_PORT,
            transport: "tls".into(),
            auth: "tls".into(),
            txt: BTreeMap::new(),
        }
    }
}

/// What is on the air right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Advertisement {
    pub instance: String,
    /// The escaped full name as registered (dots in the instance are `\.`).
    pub fullname: String,
    pub hostname: String,
    pub port: u16,
    pub addresses: Vec<IpAddr>,
    pub txt: BTreeMap<String, String>,
}

/// A running announcement. Call [`Advertiser::shutdown`] for a clean goodbye; dropping it
/// without that leaves browsers waiting up to 120 s (the record TTL) before they notice.
pub struct Advertiser {
    daemon: ServiceDaemon,
    selector: InterfaceSelector,
    current: Advertisement,
}

impl Advertiser {
    /// Starts an mDNS responder restricted to the selected interfaces and announces this host.
    pub fn start(
        config: &AdvertiseConfig,
        default_hostname: &str,
        selector: InterfaceSelector,
    ) -> Result<Self, DiscoveryError> {
        let raw_host = config.hostname.as_deref().unwrap_or(default_hostname);
        let label =
            host_label(raw_host).ok_or_else(|| DiscoveryError::BadHostname(raw_host.into()))?;
        let txt = build_txt(config, &label)?;
        let addresses = selector.announceable_addresses()?;

        let daemon = ServiceDaemon::new()?;
        restrict_to_selected_interfaces(&daemon, &selector)?;

        let instance = instance_name_for(&label);
        if instance.len() < crate::INSTANCE_PREFIX.len() + label.len() {
            warn!(host = %label, %instance, "host name too long for one DNS label; instance name cut to 63 bytes");
        }
        let info = service_info(&instance, &label, &addresses, config.port, &txt)?;
        let current = Advertisement {
            instance,
            fullname: info.get_fullname().to_string(),
            hostname: info.get_hostname().to_string(),
            port: config.port,
            addresses,
            txt,
        };
        register_with_retry(&daemon, info)?;
        info!(
            instance = %current.instance,
            hostname = %current.hostname,
            port = current.port,
            addresses = ?current.addresses,
            "announcing libvirt host"
        );
        Ok(Self {
            daemon,
            selector,
            current,
        })
    }

    pub fn advertisement(&self) -> &Advertisement {
        &self.current
    }

    /// Re-reads the interface addresses and, when they changed, re-announces. Returns whether
    /// anything changed. The old announcement is withdrawn first so browsers do not keep
    /// addresses the host no longer has until their TTL runs out.
    pub fn refresh_addresses(&mut self) -> Result<bool, DiscoveryError> {
        let addresses = match self.selector.announceable_addresses() {
            Ok(a) => a,
            Err(DiscoveryError::NoAddresses { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        if addresses == self.current.addresses {
            return Ok(false);
        }
        info!(old = ?self.current.addresses, new = ?addresses, "interface addresses changed; re-announcing");
        self.unregister(Duration::from_secs(2));
        if !addresses.is_empty() {
            let label = self
                .current
                .hostname
                .trim_end_matches(".local.")
                .to_string();
            let info = service_info(
                &self.current.instance,
                &label,
                &addresses,
                self.current.port,
                &self.current.txt,
            )?;
            register_with_retry(&self.daemon, info)?;
        } else {
            warn!("no announceable address left; announcement withdrawn until one comes back");
        }
        self.current.addresses = addresses;
        Ok(true)
    }

    /// Sends goodbye packets (TTL 0) and stops the responder; browsers drop the host within
    /// about a second.
    pub fn shutdown(mut self) {
        self.unregister(Duration::from_secs(2));
        match self.daemon.shutdown() {
            Ok(status) => {
                let _ = status.recv_timeout(Duration::from_secs(2));
            }
            Err(e) => debug!(error = %e, "mDNS daemon already stopped"),
        }
        info!(instance = %self.current.instance, "announcement withdrawn");
    }

    fn unregister(&mut self, wait: Duration) {
        if self.current.addresses.is_empty() {
            return;
        }
        match self.daemon.unregister(&self.current.fullname) {
            Ok(status) => match status.recv_timeout(wait) {
                Ok(s) => debug!(status = ?s, "unregistered"),
                Err(e) => warn!(error = %e, "no confirmation that goodbye packets were sent"),
            },
            Err(e) => warn!(error = %e, "could not unregister"),
        }
    }
}

fn build_txt(
    config: &AdvertiseConfig,
    label: &str,
) -> Result<BTreeMap<String, String>, DiscoveryError> {
    let mut txt = BTreeMap::new();
    txt.insert("txtvers".to_string(), TXT_VERSION.to_string());
    txt.insert("hostname".to_string(), label.to_string());
    txt.insert("transport".to_string(), config.transport.clone());
    txt.insert("auth".to_string(), config.auth.clone());
    let authority = if config.port == DEFAULT_LIBVIRT_TLS_PORT {
        label.to_string()
    } else {
        format!("{label}:{}", config.port)
    };
    txt.insert(
        "uri".to_string(),
        format!("qemu+{}://{authority}/system", config.transport),
    );
    for (key, value) in &config.txt {
        let bad = |why| DiscoveryError::BadTxt {
            key: key.clone(),
            why,
        };
        if RESERVED_TXT_KEYS.contains(&key.as_str()) {
            return Err(bad("virtgate sets this key itself"));
        }
        if key.is_empty() || !key.is_ascii() || key.contains('=') {
            return Err(bad("keys must be non-empty printable ASCII without '='"));
        }
        if key.len() + 1 + value.len() > 255 {
            return Err(bad("key=value must fit in 255 bytes"));
        }
        txt.insert(key.clone(), value.clone());
    }
    let total: usize = txt.iter().map(|(k, v)| 1 + k.len() + 1 + v.len()).sum();
    if total > MAX_TXT_BYTES {
        return Err(DiscoveryError::BadTxt {
            key: "(all)".into(),
            why: "the TXT record must stay under 1300 bytes to avoid IP fragmentation",
        });
    }
    Ok(txt)
}

fn service_info(
    instance: &str,
    label: &str,
    addresses: &[IpAddr],
    port: u16,
    txt: &BTreeMap<String, String>,
) -> Result<ServiceInfo, DiscoveryError> {
    let props: Vec<(&str, &str)> = txt.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Ok(ServiceInfo::new(
        SERVICE_TYPE,
        instance,
        &format!("{label}.local."),
        addresses,
        port,
        &props[..],
    )?)
}

pub(crate) fn restrict_to_selected_interfaces(
    daemon: &ServiceDaemon,
    selector: &InterfaceSelector,
) -> Result<(), DiscoveryError> {
    let selector = selector.clone();
    daemon.disable_interface(IfKind::All)?;
    daemon.enable_interface(IfKind::Predicate(IfPredicate::new(move |intf| {
        !intf.is_loopback() && selector.selects(&intf.name)
    })))?;
    Ok(())
}

/// The daemon's command queue holds 100 entries and `register` uses `try_send`: retry briefly
/// instead of failing when many registrations are queued.
fn register_with_retry(daemon: &ServiceDaemon, info: ServiceInfo) -> Result<(), DiscoveryError> {
    let mut attempts = 0;
    loop {
        match daemon.register(info.clone()) {
            Ok(()) => return Ok(()),
            Err(mdns_sd::Error::Again) if attempts < 1000 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_carries_version_host_transport_auth_and_uri() {
        let txt = build_txt(&AdvertiseConfig::default(), "h1").unwrap();
        assert_eq!(txt["txtvers"], "1");
        assert_eq!(txt["hostname"], "h1");
        assert_eq!(txt["transport"], "tls");
        assert_eq!(txt["auth"], "tls");
        assert_eq!(txt["uri"], "qemu+tls://h1/system");
    }

    #[test]
    fn txt_uri_names_a_non_default_port() {
        let config = AdvertiseConfig {
            port: 16614,
            ..Default::default()
        };
        assert_eq!(
            build_txt(&config, "h1").unwrap()["uri"],
            "qemu+tls://h1:16614/system"
        );
    }

    #[test]
    fn txt_refuses_reserved_oversized_and_malformed_keys() {
        for (key, value) in [
            ("uri".to_string(), "x".to_string()),
            ("a=b".to_string(), "x".to_string()),
            ("big".to_string(), "x".repeat(300)),
        ] {
            let mut config = AdvertiseConfig::default();
            config.txt.insert(key.clone(), value);
            assert!(build_txt(&config, "h1").is_err(), "{key} must be refused");
        }
        let mut config = AdvertiseConfig::default();
        config.txt.insert("site".into(), "rack-4".into());
        assert_eq!(build_txt(&config, "h1").unwrap()["site"], "rack-4");
    }

    #[test]
    fn txt_record_as_a_whole_is_bounded() {
        let mut config = AdvertiseConfig::default();
        for i in 0..8 {
            config.txt.insert(format!("k{i}"), "v".repeat(200));
        }
        assert!(build_txt(&config, "h1").is_err());
    }
}
