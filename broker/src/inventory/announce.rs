//! What announcements and configuration do to a host record: LAN adverts, goodbyes, static
//! hosts. Pure: each function takes the previous record and the time, and returns the change.

use virtgate_api::{EventKind, Host, HostSource, HostState};
use virtgate_discovery::HostAdvert;

use super::NewEvent;
use crate::config::StaticHost;

/// The inventory key of a configured name: host names are matched without regard to case
/// (as URIs, the policy and the proxy's table do), and one trailing dot is the same name.
pub(crate) fn host_key(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// A configured host: `(record, events)` when it is new or its addresses or port changed.
pub(crate) fn configured(
    previous: Option<&Host>,
    config: &StaticHost,
    now: i64,
) -> Option<(Host, Vec<NewEvent>)> {
    match previous {
        Some(existing) => {
            let changed = existing.addresses != config.addresses
                || existing.port != config.port
                || existing.source != HostSource::Static;
            if !changed {
                return None;
            }
            let mut h = existing.clone();
            h.source = HostSource::Static;
            h.addresses = config.addresses.clone();
            h.port = config.port;
            Some((h, Vec::new()))
        }
        None => {
            let host = Host::new(
                &host_key(&config.name),
                HostSource::Static,
                config.port,
                config.addresses.clone(),
                now,
            );
            let event = NewEvent::new(now, EventKind::Appeared, "configured as a static host");
            Some((host, vec![event]))
        }
    }
}

/// A host announced (or re-announced) on the LAN: `(record, events, needs a probe now)`.
pub(crate) fn announced(
    previous: Option<&Host>,
    name: &str,
    ad: &HostAdvert,
    now: i64,
) -> (Host, Vec<NewEvent>, bool) {
    let mut events = Vec::new();
    let (mut host, needs_probe) = match previous {
        Some(existing) if existing.source == HostSource::Static => {
            // Configuration is authoritative for addresses and port of static hosts.
            let mut h = existing.clone();
            h.instance = Some(ad.instance.clone());
            h.txt = ad.txt.clone();
            (h, false)
        }
        Some(existing) => {
            let mut h = existing.clone();
            let returned = h.state == HostState::Absent;
            let moved = repoint(&mut h, &ad.addresses) || h.port != ad.port;
            if returned {
                h.state = HostState::Unknown;
                let detail = format!("announced again as {:?}", ad.instance);
                events.push(NewEvent::new(now, EventKind::Appeared, detail));
            }
            h.port = ad.port;
            h.instance = Some(ad.instance.clone());
            h.txt = ad.txt.clone();
            (h, returned || moved)
        }
        None => {
            let mut h = Host::new(name, HostSource::Mdns, ad.port, ad.addresses.clone(), now);
            h.instance = Some(ad.instance.clone());
            h.txt = ad.txt.clone();
            let detail = format!("announced as {:?} on {}", ad.instance, join(&ad.addresses));
            events.push(NewEvent::new(now, EventKind::Appeared, detail));
            (h, true)
        }
    };
    host.last_seen = now;
    (host, events, needs_probe)
}

/// Most addresses kept waiting for verification per host: an announcement cannot grow the probe
/// list without bound.
const MAX_PENDING_ADDRESSES: usize = 16;

/// Takes the announced addresses of a discovered host; true when there is anything new to probe.
/// A host with an approved pin is never re-pointed by an announcement: its addresses stay those
/// that presented its key, and new ones wait in `pending_addresses` until a probe finds the
/// pinned key there (anyone on the LAN can announce any address under any name).
fn repoint(host: &mut Host, announced: &[std::net::IpAddr]) -> bool {
    if host.pin.is_none() {
        let moved = host.addresses != announced;
        host.addresses = announced.to_vec();
        host.pending_addresses.clear();
        return moved;
    }
    let mut pending: Vec<_> = announced
        .iter()
        .filter(|a| !host.addresses.contains(a))
        .copied()
        .collect();
    pending.truncate(MAX_PENDING_ADDRESSES);
    let news = pending.iter().any(|a| !host.pending_addresses.contains(a));
    host.pending_addresses = pending;
    news
}

/// A discovered host whose instance is no longer announced.
pub(crate) fn withdrawn(previous: &Host, instance: &str, now: i64) -> (Host, Vec<NewEvent>) {
    let mut host = previous.clone();
    host.state = HostState::Absent;
    let detail = format!("{instance:?} is no longer announced");
    (host, vec![NewEvent::new(now, EventKind::Removed, detail)])
}

fn join(addresses: &[std::net::IpAddr]) -> String {
    addresses
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
