//! What the browser reports.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

/// One announced host, as last resolved. Every field is an unauthenticated claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostAdvert {
    /// Instance name, e.g. `Virtualization Host h1`.
    pub instance: String,
    /// Full DNS-SD name, e.g. `Virtualization Host h1._libvirt._tcp.local.`.
    pub fullname: String,
    /// The SRV target, e.g. `h1.local.` (may be renamed by mDNS conflict resolution: `h1-2.local.`).
    pub hostname: String,
    pub port: u16,
    /// IPv4 first, then IPv6; IPv6 link-local addresses are left out.
    pub addresses: Vec<IpAddr>,
    pub txt: BTreeMap<String, String>,
}

impl HostAdvert {
    /// The host name without the `.local.` suffix, e.g. `h1`.
    pub fn short_hostname(&self) -> &str {
        let trimmed = self.hostname.trim_end_matches('.');
        trimmed.strip_suffix(".local").unwrap_or(trimmed)
    }
}

/// A change on the LAN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DiscoveryEvent {
    /// An instance was resolved for the first time (since it was last removed).
    Appeared(HostAdvert),
    /// A known instance now resolves differently (addresses, port, host name or TXT).
    Updated(HostAdvert),
    /// An instance said goodbye, its records expired, or a verify found it gone.
    Removed { instance: String, fullname: String },
}

impl DiscoveryEvent {
    pub fn instance(&self) -> &str {
        match self {
            Self::Appeared(a) | Self::Updated(a) => &a.instance,
            Self::Removed { instance, .. } => instance,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Appeared(_) => "appeared",
            Self::Updated(_) => "updated",
            Self::Removed { .. } => "removed",
        }
    }
}
