//! The proxy's view of the hosts it may reach: a table of targets, each saying how to connect
//! (the pin or CA that must vouch for the host) or why to refuse, published through a `watch`
//! channel. The proxy does not know where the table comes from: the binary maps the broker's
//! inventory into it, in process (`virtgate up`) or followed over the API (`virtgate proxy`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::watch;
use virtgate_pki::Pin;

/// Why a host in the table is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// The host cannot be reached now (its last probe failed, or it left the LAN).
    Unreachable,
    /// The host's key is not trusted (awaiting approval, changed, or not seen yet).
    Untrusted,
}

/// A check the gateway makes after TLS and before anything of the client reaches the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secondary {
    /// The host runs `virtgate agent`: prove the per-host secret (from `proxy.agent_secret_dir`)
    /// with the PAKE bound to this TLS session.
    AgentPake,
}

/// Whether the gateway connects to a host on a client's behalf, and how it checks the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Connect; accept the host only if it presents `pin` or, when `allow_ca`, a chain to the
    /// backend CAs that covers its name; then make the `secondary` check, if any.
    Connect {
        pin: Option<Pin>,
        allow_ca: bool,
        secondary: Option<Secondary>,
    },
    /// Refuse: `message` goes to the client (virsh prints it), `detail` to the log line.
    Refuse {
        reason: RefuseReason,
        message: String,
        detail: String,
    },
}

/// What the proxy needs to know about one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTarget {
    pub name: String,
    /// Empty: resolve `name` with the system resolver when connecting.
    pub addresses: Vec<IpAddr>,
    pub port: u16,
    pub admission: Admission,
}

/// Every host the proxy knows, by lower-case name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostTable {
    hosts: HashMap<String, HostTarget>,
}

impl HostTable {
    /// Builds the table; names are matched without regard to case (as URIs and policy do).
    pub fn new(targets: impl IntoIterator<Item = HostTarget>) -> Self {
        Self {
            hosts: targets
                .into_iter()
                .map(|t| (t.name.to_ascii_lowercase(), t))
                .collect(),
        }
    }

    /// The host named `name` (any case, one trailing dot ignored).
    pub fn get(&self, name: &str) -> Option<&HostTarget> {
        let name = name.strip_suffix('.').unwrap_or(name);
        self.hosts.get(&name.to_ascii_lowercase())
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

/// The current table; a new one is published whenever the inventory changes.
pub type HostTableWatch = watch::Receiver<Arc<HostTable>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str) -> HostTarget {
        HostTarget {
            name: name.into(),
            addresses: vec![],
            port: 16514,
            admission: Admission::Connect {
                pin: None,
                allow_ca: true,
                secondary: None,
            },
        }
    }

    #[test]
    fn hosts_are_found_whatever_the_case_and_a_trailing_dot() {
        let table = HostTable::new([target("H7.example.com"), target("h1")]);
        assert_eq!(table.get("h7.example.com").unwrap().name, "H7.example.com");
        assert!(table.get("H1").is_some());
        assert!(table.get("h1.").is_some());
        assert!(table.get("h2").is_none());
    }
}
