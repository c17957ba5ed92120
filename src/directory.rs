//! The composition root's adapters: the broker's inventory (in this process, or followed over
//! its API) becomes the proxy's host table. The mapping from inventory state to "connect with
//! this pin" or "refuse with this message" is written once, here, for both sources.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use virtgate_api::{Followed, Host, HostState, TrustState};
use virtgate_broker::inventory::Inventory;
use virtgate_proxy::{Admission, HostTable, HostTableWatch, HostTarget, RefuseReason, Secondary};

/// Whether the gateway may connect to `host` for a client, and the words a refusal uses.
pub fn admission(host: &Host) -> Admission {
    let name = &host.name;
    let trusted = host.trust.is_trusted();
    if host.state == HostState::Absent || (host.state == HostState::Down && !trusted) {
        return Admission::Refuse {
            reason: RefuseReason::Unreachable,
            message: format!("virtgate: host {name} is unreachable (the broker's last probe failed or it left the LAN); see `virtgate hosts`"),
            detail: format!("host state {}", host.state.as_str()),
        };
    }
    if !trusted {
        let message = match host.trust {
            TrustState::Pending => format!("virtgate: host {name} is not trusted yet: its key awaits approval (`virtgate hosts approve {name}`)"),
            TrustState::Changed if host.agent => format!("virtgate: host {name} presents another key than the one its agent enrolled with; refusing until it is enrolled again (`virtgate enroll {name}`)"),
            TrustState::Changed => format!("virtgate: host {name} presents a key that differs from its approved pin; refusing until an operator re-approves it (`virtgate hosts`)"),
            _ => format!("virtgate: host {name} has not been probed yet; try again in a moment"),
        };
        return Admission::Refuse {
            reason: RefuseReason::Untrusted,
            message,
            detail: format!("trust state {}", host.trust.as_str()),
        };
    }
    Admission::Connect {
        pin: host.pin,
        allow_ca: host.trust == TrustState::TrustedCa,
        // A host enrolled through its agent is always reached with the agent check.
        secondary: host.agent.then_some(Secondary::AgentPake),
    }
}

/// The proxy's table for a set of inventory hosts.
pub fn host_table(hosts: &[Host]) -> HostTable {
    HostTable::new(hosts.iter().map(|h| HostTarget {
        name: h.name.clone(),
        addresses: h.addresses.clone(),
        port: h.port,
        admission: admission(h),
    }))
}

/// Publishes the in-process inventory as a host table, again after every change, until
/// `shutdown`. Run the returned future in the owner's task set.
pub fn from_inventory(
    inventory: Arc<Inventory>,
    shutdown: CancellationToken,
) -> (HostTableWatch, impl Future<Output = ()>) {
    let mut revisions = inventory.subscribe();
    let (tx, rx) = watch::channel(Arc::new(host_table(&inventory.snapshot().1)));
    let publish = async move {
        loop {
            tokio::select! {
                changed = revisions.changed() => if changed.is_err() { return },
                () = shutdown.cancelled() => return,
            }
            tx.send_replace(Arc::new(host_table(&inventory.snapshot().1)));
        }
    };
    (rx, publish)
}

/// Publishes a followed broker's inventory as a host table, until `shutdown`. Until the first
/// copy arrives the table is empty: every host is unknown.
pub fn from_broker(
    mut followed: Followed,
    shutdown: CancellationToken,
) -> (HostTableWatch, impl Future<Output = ()>) {
    let (tx, rx) = watch::channel(Arc::new(HostTable::default()));
    let publish = async move {
        loop {
            let table = followed
                .borrow_and_update()
                .as_ref()
                .map(|copy| host_table(&copy.hosts));
            if let Some(table) = table {
                tx.send_replace(Arc::new(table));
            }
            tokio::select! {
                changed = followed.changed() => if changed.is_err() { return },
                () = shutdown.cancelled() => return,
            }
        }
    };
    (rx, publish)
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtgate_api::HostSource;

    fn host(state: HostState, trust: TrustState) -> Host {
        let mut h = Host::new("h1", HostSource::Static, 16514, vec![], 0);
        h.state = state;
        h.trust = trust;
        h.pin = Some(virtgate_api::Pin::from_bytes([0xab; 32]));
        h
    }

    #[test]
    fn only_trusted_hosts_that_are_not_gone_are_connected_to() {
        use HostState as S;
        use TrustState as T;
        for (state, trust, connect) in [
            (S::Up, T::Pinned, true),
            (S::Up, T::TrustedCa, true),
            (S::Down, T::Pinned, true),
            (S::Unknown, T::Pinned, true),
            (S::Absent, T::Pinned, false),
            (S::Down, T::Pending, false),
            (S::Up, T::Pending, false),
            (S::Up, T::Changed, false),
            (S::Up, T::Unknown, false),
            (S::Up, T::Enrolled, true),
            (S::Down, T::Enrolled, true),
            (S::Absent, T::Enrolled, false),
        ] {
            let admitted = matches!(admission(&host(state, trust)), Admission::Connect { .. });
            assert_eq!(admitted, connect, "{state:?} {trust:?}");
        }
    }

    #[test]
    fn only_ca_trusted_hosts_may_be_vouched_for_by_a_ca() {
        let Admission::Connect { pin, allow_ca, .. } =
            admission(&host(HostState::Up, TrustState::Pinned))
        else {
            panic!("pinned hosts are connected to");
        };
        let approved = virtgate_api::Pin::from_bytes([0xab; 32]);
        assert_eq!((pin, allow_ca), (Some(approved), false));
        let Admission::Connect { allow_ca, .. } =
            admission(&host(HostState::Up, TrustState::TrustedCa))
        else {
            panic!("CA-trusted hosts are connected to");
        };
        assert!(allow_ca);
    }

    #[test]
    fn a_host_enrolled_through_its_agent_is_reached_with_the_agent_check_and_only_its_pin() {
        let mut enrolled = host(HostState::Up, TrustState::Enrolled);
        enrolled.agent = true;
        let approved = virtgate_api::Pin::from_bytes([0xab; 32]);
        assert_eq!(
            admission(&enrolled),
            Admission::Connect {
                pin: Some(approved),
                allow_ca: false,
                secondary: Some(Secondary::AgentPake),
            }
        );
        let Admission::Connect { secondary, .. } =
            admission(&host(HostState::Up, TrustState::Pinned))
        else {
            panic!("pinned hosts are connected to");
        };
        assert_eq!(
            secondary, None,
            "plain libvirtd hosts keep working as before"
        );
        enrolled.trust = TrustState::Changed;
        let Admission::Refuse { message, .. } = admission(&enrolled) else {
            panic!("a re-keyed agent is refused");
        };
        assert!(message.contains("`virtgate enroll h1`"), "{message}");
    }

    #[test]
    fn refusals_tell_the_operator_what_to_run() {
        let Admission::Refuse {
            reason, message, ..
        } = admission(&host(HostState::Up, TrustState::Pending))
        else {
            panic!("pending hosts are refused");
        };
        assert_eq!(reason, RefuseReason::Untrusted);
        assert!(message.contains("`virtgate hosts approve h1`"), "{message}");
    }
}
