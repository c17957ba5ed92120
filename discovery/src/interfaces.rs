//! Which network interfaces take part in discovery.

use std::net::IpAddr;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use crate::DiscoveryError;

/// Interfaces every hypervisor has that must never be announced: a host announcing
/// 192.168.122.1 from `virbr0` sends every client to its own NAT bridge.
pub const DEFAULT_EXCLUDED_INTERFACES: &[&str] = &[
    "lo", "virbr*", "docker*", "br-*", "veth*", "vnet*", "tap*", "cni*", "flannel*", "lxc*",
];

/// Interface selection as configured: globs over interface names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InterfaceConfig {
    /// Only interfaces matching one of these globs (empty: all interfaces).
    pub include: Vec<String>,
    /// Interfaces matching one of these globs are never used, even when included.
    pub exclude: Vec<String>,
}

impl Default for InterfaceConfig {
    fn default() -> Self {
        Self {
            include: Vec::new(),
            exclude: DEFAULT_EXCLUDED_INTERFACES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// A compiled [`InterfaceConfig`].
#[derive(Debug, Clone)]
pub struct InterfaceSelector {
    include: Option<GlobSet>,
    exclude: GlobSet,
    config: InterfaceConfig,
}

impl InterfaceSelector {
    pub fn new(config: &InterfaceConfig) -> Result<Self, DiscoveryError> {
        let include = if config.include.is_empty() {
            None
        } else {
            Some(build_set(&config.include)?)
        };
        Ok(Self {
            include,
            exclude: build_set(&config.exclude)?,
            config: config.clone(),
        })
    }

    /// Whether an interface with this name takes part.
    pub fn selects(&self, interface: &str) -> bool {
        let included = self
            .include
            .as_ref()
            .is_none_or(|set| set.is_match(interface));
        included && !self.exclude.is_match(interface)
    }

    /// The addresses to announce: every IPv4 and IPv6 address of the selected interfaces that
    /// are up, except loopback and IPv6 link-local (meaningless without the sender's scope),
    /// IPv4 first, each family sorted.
    pub fn announceable_addresses(&self) -> Result<Vec<IpAddr>, DiscoveryError> {
        let interfaces = if_addrs::get_if_addrs().map_err(DiscoveryError::Interfaces)?;
        let mut addresses: Vec<IpAddr> = interfaces
            .iter()
            .filter(|i| i.is_oper_up() && !i.is_loopback() && self.selects(&i.name))
            .map(|i| i.ip())
            .filter(|ip| !is_ipv6_link_local(ip))
            .collect();
        sort_addresses(&mut addresses);
        if addresses.is_empty() {
            return Err(DiscoveryError::NoAddresses {
                include: self.config.include.clone(),
                exclude: self.config.exclude.clone(),
            });
        }
        Ok(addresses)
    }

    pub fn config(&self) -> &InterfaceConfig {
        &self.config
    }
}

fn build_set(globs: &[String]) -> Result<GlobSet, DiscoveryError> {
    let mut builder = GlobSetBuilder::new();
    for glob in globs {
        builder.add(Glob::new(glob).map_err(|source| DiscoveryError::BadGlob {
            glob: glob.clone(),
            source,
        })?);
    }
    builder.build().map_err(|source| DiscoveryError::BadGlob {
        glob: globs.join(","),
        source,
    })
}

pub(crate) fn is_ipv6_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// IPv4 before IPv6, each family in numeric order: a stable order for output and comparisons.
pub(crate) fn sort_addresses(addresses: &mut Vec<IpAddr>) {
    addresses.sort_by_key(|ip| (ip.is_ipv6(), *ip));
    addresses.dedup();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(include: &[&str], exclude: &[&str]) -> InterfaceSelector {
        InterfaceSelector::new(&InterfaceConfig {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn default_selection_skips_loopback_and_hypervisor_bridges() {
        let s = InterfaceSelector::new(&InterfaceConfig::default()).unwrap();
        for name in [
            "lo",
            "virbr0",
            "virbr1-nic",
            "docker0",
            "br-1a2b",
            "veth12",
            "vnet3",
            "tap0",
            "cni0",
            "flannel.1",
            "lxcbr0",
        ] {
            assert!(!s.selects(name), "{name} must be excluded by default");
        }
        for name in ["eth0", "eno1", "enp3s0", "wlan0", "bond0", "br0"] {
            assert!(s.selects(name), "{name} must be selected by default");
        }
    }

    #[test]
    fn include_narrows_and_exclude_wins() {
        let s = selector(&["eth*", "bond*"], &["eth9"]);
        assert!(s.selects("eth0"));
        assert!(s.selects("bond0"));
        assert!(!s.selects("eth9"));
        assert!(!s.selects("wlan0"));
    }

    #[test]
    fn a_bad_glob_is_an_error_naming_it() {
        let err = InterfaceSelector::new(&InterfaceConfig {
            include: vec!["eth[".into()],
            exclude: vec![],
        })
        .unwrap_err();
        assert!(err.to_string().contains("eth["), "{err}");
    }

    #[test]
    fn link_local_ipv6_is_recognised() {
        assert!(is_ipv6_link_local(&"fe80::1".parse().unwrap()));
        assert!(!is_ipv6_link_local(&"fd00:250::11".parse().unwrap()));
        assert!(!is_ipv6_link_local(&"10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn addresses_sort_ipv4_first() {
        let mut a: Vec<IpAddr> = vec![
            "fd00::2".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
        ];
        sort_addresses(&mut a);
        assert_eq!(
            a,
            vec![
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "10.0.0.2".parse().unwrap(),
                "fd00::2".parse().unwrap()
            ]
        );
    }
}
