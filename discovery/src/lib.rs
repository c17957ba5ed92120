//! LAN discovery of libvirt virtualization hosts over mDNS / DNS-SD.
//!
//! Owns: announcing a host as `Virtualization Host <name>` of type `_libvirt._tcp.local.`
//! ([`Advertiser`]), and turning what the LAN announces into a stream of typed
//! [`DiscoveryEvent`]s ([`Browser`]): appeared, updated, removed, with IPv4 and IPv6 addresses.
//! Also owns the choice of network interfaces ([`InterfaceSelector`]): hypervisor bridges such as
//! `virbr0` are never announced.
//!
//! Must not: trust anything it receives. A TXT record or an instance name is an unauthenticated
//! claim by whoever is on the LAN; the broker verifies hosts by their TLS certificates. This crate
//! also never starts a daemon implicitly: creating an [`Advertiser`] or a [`Browser`] joins the
//! mDNS multicast groups on every interface of the current network namespace.
#![forbid(unsafe_code)]

mod advertiser;
mod announcement;
mod browser;
mod event;
mod interfaces;
mod names;

pub use advertiser::{AdvertiseConfig, Advertisement, Advertiser};
pub use announcement::txt_entries;
pub use browser::{Browser, BrowserStats, DiscoveryConfig};
pub use event::{DiscoveryEvent, HostAdvert};
pub use interfaces::{InterfaceConfig, InterfaceSelector, DEFAULT_EXCLUDED_INTERFACES};
pub use names::{instance_from_fullname, instance_name_for, INSTANCE_PREFIX, MAX_LABEL_BYTES};

/// The DNS-SD service type libvirt hosts are announced under (libvirtd used it until v5.5.0).
pub const SERVICE_TYPE: &str = "_libvirt._tcp.local.";

/// libvirt's TLS port, announced when nothing else is configured.
pub const DEFAULT_LIBVIRT_TLS_PORT: u16 = 16514;

/// Version of the TXT record layout documented in `docs/discovery.md`.
pub const TXT_VERSION: &str = "1";

/// Errors of the discovery layer. Each message says what to check next.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("mDNS daemon failed: {0} (is another process holding UDP port 5353 exclusively?)")]
    Daemon(#[from] mdns_sd::Error),
    #[error("invalid interface glob {glob:?}: {source}")]
    BadGlob {
        glob: String,
        #[source]
        source: globset::Error,
    },
    #[error("cannot list network interfaces: {0}")]
    Interfaces(#[source] std::io::Error),
    #[error(
        "no usable network interface: none matches the selection (include {include:?}, \
         exclude {exclude:?}); check `ip addr`, then --interface / --exclude-interface or \
         discovery.interfaces"
    )]
    NoAddresses {
        include: Vec<String>,
        exclude: Vec<String>,
    },
    #[error("invalid host name {0:?}: use letters, digits and '-' (it becomes <name>.local.)")]
    BadHostname(String),
    #[error("invalid TXT entry {key:?}: {why}")]
    BadTxt { key: String, why: &'static str },
}
