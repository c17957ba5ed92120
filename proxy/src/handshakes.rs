//! How many connections each source address has in their handshake (TLS, then the pre-open
//! exchange). Unauthenticated peers hold a connection slot for up to `handshake_timeout`; a cap
//! per address keeps one address from taking every slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The counts, shared by the accept loops and the connections.
#[derive(Debug, Clone)]
pub(crate) struct PerSource {
    limit: usize,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection's place in its address's count; given back when dropped.
#[derive(Debug)]
pub(crate) struct HandshakeSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    source: IpAddr,
}

impl PerSource {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            counts: Arc::default(),
        }
    }

    /// A slot for one more connection from `source`, unless it has `limit` already.
    pub(crate) fn try_acquire(&self, source: IpAddr) -> Option<HandshakeSlot> {
        let source = canonical(source);
        let mut counts = self.counts.lock().expect("handshake counts poisoned");
        let count = counts.entry(source).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(HandshakeSlot {
            counts: self.counts.clone(),
            source,
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().expect("handshake counts poisoned");
        if let Some(count) = counts.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_its_own_limit_and_slots_come_back_when_dropped() {
        let limiter = PerSource::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = limiter.try_acquire(a).unwrap();
        let _second = limiter.try_acquire(a).unwrap();
        assert!(
            limiter.try_acquire(a).is_none(),
            "a third from the same address waits"
        );
        assert!(limiter
            .try_acquire("::ffff:10.0.0.1".parse().unwrap())
            .is_none());
        assert!(
            limiter.try_acquire(b).is_some(),
            "another address is not affected"
        );
        drop(first);
        assert!(limiter.try_acquire(a).is_some());
    }

    #[test]
    fn nothing_is_kept_for_addresses_with_no_connection() {
        let limiter = PerSource::new(1);
        drop(limiter.try_acquire("10.0.0.1".parse().unwrap()));
        assert!(limiter.counts.lock().unwrap().is_empty());
    }
}
